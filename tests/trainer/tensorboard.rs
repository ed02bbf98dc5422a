//! `TensorBoardLogger` read back by TensorBoard itself: a short fit (and a test run after it)
//! logging to TensorBoard and CSV together (epoch 0's records must be on disk when epoch 1
//! starts), then tensorboard's `EventAccumulator` on the log directory. Every value in `metrics.csv` must be a scalar event with the same tag, step
//! and value (as a 32-bit float, what `simple_value` holds), nothing else but `hp_metric`;
//! the hparams plugin must show our hyperparameters with their types, `hp_metric` as the
//! metric and a successful session, the same plugin data Lightning's own `TensorBoardLogger`
//! writes for these hyperparameters.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{Callback, LearningRateMonitor, TrainerContext};
use lightning_core::loggers::{CsvLogger, TensorBoardLogger};
use lightning_core::trainer::Trainer;
use std::collections::BTreeMap;
use std::time::Duration;
use trainer_util::{data, files_under, Tiny, TinyHp};

/// Reads the directory as TensorBoard does and prints what it saw as JSON.
const READ_BACK: &str = r#"
import json, sys
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams import api_pb2
except ImportError as e:
    print(json.dumps({"missing": str(e)}))
    sys.exit(0)
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
scalars = {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
out = {"scalars": scalars, "hparams": {}}
for tag, content in acc.PluginTagToContent("hparams").items():
    d = plugin_data_pb2.HParamsPluginData.FromString(content)
    assert d.version == 0, d
    kind = d.WhichOneof("data")
    if kind == "experiment":
        out["hparams"][tag] = {
            "hparams": [[h.name, api_pb2.DataType.Name(h.type)] for h in d.experiment.hparam_infos],
            "metrics": [m.name.tag for m in d.experiment.metric_infos],
        }
    elif kind == "session_start_info":
        out["hparams"][tag] = {
            k: (v.number_value if v.WhichOneof("kind") == "number_value" else v.string_value)
            for k, v in d.session_start_info.hparams.items()
        }
    else:
        out["hparams"][tag] = api_pb2.Status.Name(d.session_end_info.status)

# Lightning's own TensorBoardLogger given the same hyperparameters (our hparams.yaml)
import os, yaml
from lightning.pytorch.loggers import TensorBoardLogger
with open(os.path.join(sys.argv[1], "hparams.yaml")) as f:
    hp = yaml.safe_load(f)
ref = TensorBoardLogger(sys.argv[2])
ref.log_hyperparams(hp)
ref.finalize("success")
racc = EventAccumulator(ref.log_dir)
racc.Reload()
ours, theirs = acc.PluginTagToContent("hparams"), racc.PluginTagToContent("hparams")
parse = plugin_data_pb2.HParamsPluginData.FromString
out["lightning"] = {
    "tags_equal": sorted(ours) == sorted(theirs),
    "plugin_data_equal": {t: parse(ours[t]) == parse(theirs[t]) for t in theirs},
    "hp_metric": [[e.step, e.value] for e in racc.Scalars("hp_metric")],
}
print(json.dumps(out))
"#;

/// What the event file on disk holds when epoch 1 starts: TensorBoard follows a live run.
#[derive(Default)]
struct LiveReader {
    seen: Option<Vec<u8>>,
}

impl Callback for LiveReader {
    fn state_key(&self) -> String {
        "LiveReader".into()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn on_train_epoch_start(&mut self, t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        if t.run.current_epoch == 1 {
            let dir = t.run.log_dir.expect("a log dir");
            for e in std::fs::read_dir(dir).unwrap() {
                let path = e.unwrap().path();
                if path.to_str().unwrap().contains("events.out.tfevents.") {
                    self.seen = Some(std::fs::read(path).unwrap());
                }
            }
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `metrics.csv` as (tag -> [(step, value)]) in row order, every non-empty cell but `step`.
fn csv_scalars(text: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let step_col = header.iter().position(|h| *h == "step").unwrap();
    let mut out: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let step: i64 = cells[step_col].parse().unwrap();
        for (h, c) in header.iter().zip(&cells) {
            if *h != "step" && !c.is_empty() {
                out.entry(h.to_string())
                    .or_default()
                    .push((step, c.parse().unwrap()));
            }
        }
    }
    out
}

#[test]
fn tensorboard_sees_every_scalar_and_the_hparams() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let hp = TinyHp::default();
    let (mut m, _vs) = Tiny::new(hp.clone(), 0);
    let dm = data(32, 8, false); // 3 train batches, 1 val batch
    let mut t = Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .seed(7)
        .default_root_dir(dir.path())
        .max_epochs(2)
        .log_every_n_steps(1)
        .enable_checkpointing(false)
        .callback(LearningRateMonitor::new())
        .callback(LiveReader::default())
        .logger((TensorBoardLogger::default(), CsvLogger::default()))
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    // epoch 0's records were on disk (flushed) before epoch 1 started
    let live = t.callback::<LiveReader>().unwrap().seen.as_deref();
    let live = live.expect("an event file during the run");
    for tag in [
        "_hparams_/experiment",
        "hp_metric",
        "train_loss",
        "val_loss",
        "epoch",
    ] {
        assert!(contains(live, tag), "{tag} not flushed after epoch 0");
    }
    t.test(&mut m, &dm, None).unwrap();

    // Both loggers share version_0, the trainer's log_dir (the first logger's).
    let v = dir.path().join("lightning_logs/version_0");
    assert_eq!(t.log_dir().unwrap(), v);
    let files = files_under(dir.path());
    let events: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("lightning_logs/version_0/events.out.tfevents."))
        .collect();
    // one event file for the fit, one for the test run after it
    assert_eq!(events.len(), 2, "{files:?}");
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(v.join("hparams.yaml").is_file() && v.join("metrics.csv").is_file());

    let csv = std::fs::read_to_string(v.join("metrics.csv")).unwrap();
    let mut want = csv_scalars(&csv);
    for tag in [
        "train_loss",
        "val_loss",
        "val_acc",
        "test_loss",
        "epoch",
        "lr-Adam",
    ] {
        assert!(want.contains_key(tag), "{tag} not in {csv}");
    }
    want.insert("hp_metric".into(), vec![(0, -1.0)]);

    let Some(out) = lightning_testkit::run_python_within(
        READ_BACK,
        &[
            v.to_str().unwrap(),
            dir.path().join("lightning").to_str().unwrap(),
        ],
        Duration::from_secs(120),
    ) else {
        return; // skipped, the reason printed
    };
    let out: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    if let Some(why) = out["missing"].as_str() {
        // the Python rule's probe checks torch and lightning only
        lightning_testkit::skip_or_fail(&format!(
            "tensorboard in Python ({why}; scripts/setup.sh installs it)"
        ));
        return;
    }

    let scalars = out["scalars"].as_object().unwrap();
    let got_tags: Vec<&String> = scalars.keys().collect();
    let want_tags: Vec<&String> = want.keys().collect();
    let mut got_sorted = got_tags.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want_tags);
    for (tag, rows) in &want {
        let got: Vec<(i64, f64)> = scalars[tag]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_i64().unwrap(), e[1].as_f64().unwrap()))
            .collect();
        let want32: Vec<(i64, f64)> = rows
            .iter()
            .map(|(s, x)| (*s, f64::from(*x as f32)))
            .collect();
        assert_eq!(got, want32, "{tag}");
    }

    let hparams = &out["hparams"];
    let experiment = &hparams["_hparams_/experiment"];
    assert_eq!(
        experiment["hparams"],
        serde_json::json!([
            ["hidden", "DATA_TYPE_FLOAT64"],
            ["lr", "DATA_TYPE_FLOAT64"],
            ["dropout", "DATA_TYPE_FLOAT64"],
            ["optimizer", "DATA_TYPE_STRING"],
            ["step_lr", "DATA_TYPE_FLOAT64"]
        ])
    );
    assert_eq!(experiment["metrics"], serde_json::json!(["hp_metric"]));
    assert_eq!(
        hparams["_hparams_/session_start_info"],
        serde_json::json!({
            "hidden": hp.hidden as f64,
            "lr": hp.lr,
            "dropout": hp.dropout,
            "optimizer": hp.optimizer,
            "step_lr": hp.step_lr as f64,
        })
    );
    assert_eq!(
        hparams["_hparams_/session_end_info"],
        serde_json::json!("STATUS_SUCCESS")
    );
    // and they are what Lightning's TensorBoardLogger writes for these hyperparameters
    assert_eq!(
        out["lightning"],
        serde_json::json!({
            "tags_equal": true,
            "plugin_data_equal": {
                "_hparams_/experiment": true,
                "_hparams_/session_start_info": true,
                "_hparams_/session_end_info": true,
            },
            "hp_metric": [[0, -1.0]],
        })
    );
}
