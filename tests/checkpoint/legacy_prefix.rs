//! Lightning 1.x's `ModelCheckpoint(prefix=..)`: every name is `{prefix}-{name}`, `last`
//! included. The names equal what Lightning 2.6's `format_checkpoint_name(.., prefix=..)` (the
//! code path 1.x's option used) renders for the same metrics, and `ckpt_path = Last` resumes
//! from `{prefix}-last.ckpt`.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::trainer::{CkptPath, Trainer};
use std::path::Path;
use std::time::Duration;
use trainer_util::{data, Tiny, TinyHp};

/// `argv[1]`: JSON list of [epoch, step] -> the file names Lightning renders with prefix `run1`
/// (and its `last`).
const SCRIPT: &str = r#"
import json, sys
from lightning.pytorch.callbacks import ModelCheckpoint
cb = ModelCheckpoint(filename="{epoch}-{step}")
names = [cb.format_checkpoint_name({"epoch": e, "step": s}, prefix="run1") for e, s in json.loads(sys.argv[1])]
names.append(cb._format_checkpoint_name(cb.CHECKPOINT_NAME_LAST, {}, prefix="run1") + cb.FILE_EXTENSION)
names.append(cb.format_checkpoint_name({"epoch": 0, "step": 6}, ver=1, prefix="run1"))
print(json.dumps(sorted(names)))
"#;

fn trainer(dir: &Path, epochs: i64) -> Trainer {
    Trainer::builder()
        .max_epochs(epochs)
        .enable_progress_bar(false)
        .logger(false)
        .seed(2)
        .default_root_dir(dir)
        .callback(
            ModelCheckpoint::builder()
                .dirpath(dir)
                .filename("{epoch}-{step}")
                .save_top_k(-1)
                .save_last(SaveLast::True)
                .prefix("run1")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[test]
fn prefix_names_match_lightnings_and_last_resumes() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 1);
    trainer(dir.path(), 2)
        .fit(&mut m, &data(64, 8, true), None)
        .unwrap();
    let mut files = trainer_util::files_under(dir.path());
    files.sort();
    assert_eq!(
        files,
        [
            "run1-epoch=0-step=6.ckpt",
            "run1-epoch=1-step=12.ckpt",
            "run1-last.ckpt"
        ]
    );
    // ckpt_path = Last finds the prefixed last file
    let (mut m2, _vs) = Tiny::new(TinyHp::default(), 9);
    let mut t = trainer(dir.path(), 3);
    t.fit(&mut m2, &data(64, 8, true), Some(CkptPath::Last))
        .unwrap();
    assert_eq!(t.global_step(), 18, "resumed at step 12, one more epoch");

    let Some(out) = lightning_testkit::run_python_within(
        SCRIPT,
        &["[[0, 6], [1, 12]]"],
        Duration::from_secs(120),
    ) else {
        return;
    };
    let theirs: Vec<String> = serde_json::from_str(out.unwrap().lines().last().unwrap()).unwrap();
    let cb = ModelCheckpoint::builder()
        .filename("{epoch}-{step}")
        .prefix("run1")
        .build()
        .unwrap();
    let mut want = files.clone();
    let metrics = [("epoch", 0i64), ("step", 6)]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                lightning_core::callbacks::MetricValue::Int(v),
            )
        })
        .collect();
    let v1 = cb.format_checkpoint_name(&metrics, None, Some(1), Some("run1"));
    want.push(v1.unwrap().to_string_lossy().into_owned());
    want.sort();
    assert_eq!(want, theirs);
}
