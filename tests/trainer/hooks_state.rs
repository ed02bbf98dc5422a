//! Checkpoint hooks and states beyond the module's weights, in Lightning's order: a
//! datamodule's `state_dict` saved under its name and restored (resume and `ckpt_path`
//! evaluation); the module's and callbacks' `on_save_checkpoint` / `on_load_checkpoint`
//! (also from `load_from_checkpoint`); `ckpt_path` ("best", "last", a file) for `validate`,
//! `test` and `predict`.

use lightning_testkit::trainer_util;

use lightning_core::callbacks::{Callback, TrainerContext};
use lightning_core::checkpoint;
use lightning_core::data::{DataModule, DataModuleState};
use lightning_core::lightning_module::{Batch, OptimizerConfig, StepContext};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use std::any::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{nn, Tensor};
use trainer_util::{data, SaveAt, Tiny, TinyHp};

/// The datamodule's state: a counter of epochs it "prepared".
#[derive(Default)]
struct Prepared {
    epochs: i64,
    loaded: Vec<i64>,
}

impl DataModuleState for Prepared {
    fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        v.insert("epochs", self.epochs);
        v
    }
    fn load_state_dict(&mut self, state: &Value) -> lightning_core::Result<()> {
        let e = state
            .get("epochs")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Msg("datamodule state: no `epochs`".into()))?;
        self.epochs = e;
        self.loaded.push(e);
        Ok(())
    }
}

/// Records the order of hook calls shared between the module and a callback.
type Journal = Arc<Mutex<Vec<String>>>;

fn note(j: &Journal, s: impl Into<String>) {
    j.lock().unwrap().push(s.into());
}

/// [`Tiny`] with `on_save_checkpoint` / `on_load_checkpoint` that add and read a key.
struct Hooked {
    inner: Tiny,
    journal: Journal,
}

lightning_testkit::wraps_tiny!(Hooked, inner);

impl LightningModule for Hooked {
    fn build(hp: &TinyHp, vs: &nn::Path) -> lightning_core::Result<Self> {
        Ok(Hooked {
            inner: Tiny::build(hp, vs)?,
            journal: Journal::default(),
        })
    }
    fn training_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        self.inner.training_step(b, i, ctx)
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        self.inner.validation_step(b, i, ctx)
    }
    fn test_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        self.inner.test_step(b, i, ctx)
    }
    fn predict_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<Tensor> {
        self.inner.predict_step(b, i, ctx)
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        self.inner.configure_optimizers()
    }
    fn on_save_checkpoint(&self, ckpt: &mut Value) {
        // sees what the callbacks' on_save_checkpoint added (they run first, as Lightning)
        let from_cb = ckpt.get("from_callback").cloned().unwrap_or(Value::None);
        let mut extra = Value::dict();
        extra.insert(
            "saved_at_step",
            ckpt.get("global_step").cloned().unwrap_or(Value::None),
        );
        extra.insert("saw_callback_key", !matches!(from_cb, Value::None));
        ckpt.insert("module_extra", extra);
    }
    fn on_load_checkpoint(&mut self, ckpt: &Value) -> lightning_core::Result<()> {
        let step = ckpt
            .get_path("module_extra.saved_at_step")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Msg("on_load_checkpoint: no module_extra".into()))?;
        // the weights are not loaded yet (Lightning's order)
        note(&self.journal, format!("module.on_load_checkpoint({step})"));
        Ok(())
    }
}

/// A callback with both state and checkpoint hooks.
struct Recorder {
    journal: Journal,
    count: i64,
}

impl Callback for Recorder {
    fn state_key(&self) -> String {
        "Recorder".into()
    }
    fn on_train_batch_end(&mut self, _t: &mut TrainerContext<'_>) -> lightning_core::Result<()> {
        self.count += 1;
        Ok(())
    }
    fn state_dict(&self) -> Value {
        let mut v = Value::dict();
        v.insert("count", self.count);
        v
    }
    fn load_state_dict(&mut self, state: &Value) -> lightning_core::Result<()> {
        self.count = state.get("count").and_then(Value::as_i64).unwrap_or(-1);
        note(
            &self.journal,
            format!("callback.load_state_dict({})", self.count),
        );
        Ok(())
    }
    fn on_save_checkpoint(&self, ckpt: &mut Value) {
        ckpt.insert("from_callback", self.count);
    }
    fn on_load_checkpoint(&mut self, ckpt: &Value) -> lightning_core::Result<()> {
        let v = ckpt.get("from_callback").and_then(Value::as_i64);
        note(&self.journal, format!("callback.on_load_checkpoint({v:?})"));
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn trainer(dir: &Path, epochs: i64, journal: &Journal, save_steps: &[i64]) -> Trainer {
    Trainer::builder()
        .max_epochs(epochs)
        .enable_progress_bar(false)
        .logger(false)
        .seed(3)
        .default_root_dir(dir)
        .callback(Recorder {
            journal: journal.clone(),
            count: 0,
        })
        .callback(SaveAt::new(
            &dir.join("ckpts"),
            save_steps,
            "step{step}.ckpt",
        ))
        .build()
        .unwrap()
}

fn hooked(journal: &Journal, seed: i64) -> (Hooked, nn::VarStore) {
    let (inner, vs) = Tiny::new(TinyHp::default(), seed);
    (
        Hooked {
            inner,
            journal: journal.clone(),
        },
        vs,
    )
}

/// Fit 2 epochs (6 batches each) saving at step 6 with a stateful datamodule; the file holds
/// the datamodule's state under its name, the callback's and the module's extra keys; a
/// resume restores them in Lightning's order (datamodule, module hook, callbacks' hooks, then
/// callback states).
#[test]
fn datamodule_state_and_checkpoint_hooks_round_trip_through_a_resume() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::default();
    let prepared = Arc::new(Mutex::new(Prepared {
        epochs: 7,
        ..Default::default()
    }));
    let dm = data(64, 8, true).state("PreparedDataModule", prepared.clone());
    let (mut m, _vs) = hooked(&journal, 1);
    trainer(dir.path(), 1, &journal, &[6])
        .fit(&mut m, &dm, None)
        .unwrap();
    let file = dir.path().join("ckpts/step6.ckpt");
    let v = checkpoint::load(&file).unwrap();
    assert_eq!(
        v.get_path("PreparedDataModule.epochs")
            .and_then(Value::as_i64),
        Some(7)
    );
    assert_eq!(v.get("from_callback").and_then(Value::as_i64), Some(6));
    assert_eq!(
        v.get_path("module_extra.saved_at_step")
            .and_then(Value::as_i64),
        Some(6)
    );
    assert_eq!(
        v.get_path("module_extra.saw_callback_key"),
        Some(&Value::Bool(true))
    );
    // Lightning's key order: hyper_parameters, the datamodule, our resume entry, extras
    let keys: Vec<String> = v.as_dict().unwrap().keys().map(|k| k.to_string()).collect();
    let pos = |k: &str| keys.iter().position(|x| x == k).unwrap();
    assert!(
        pos("hyper_parameters") < pos("PreparedDataModule"),
        "{keys:?}"
    );
    assert!(pos("PreparedDataModule") < pos("module_extra"), "{keys:?}");
    assert!(journal.lock().unwrap().is_empty());

    // resume into a fresh datamodule state, module and callback
    let fresh = Arc::new(Mutex::new(Prepared::default()));
    let dm = data(64, 8, true).state("PreparedDataModule", fresh.clone());
    let journal = Journal::default();
    let (mut m, _vs) = hooked(&journal, 99);
    let mut t = trainer(dir.path(), 2, &journal, &[]);
    t.fit(&mut m, &dm, Some(CkptPath::from(&file))).unwrap();
    assert_eq!(fresh.lock().unwrap().loaded, vec![7]);
    assert_eq!(
        *journal.lock().unwrap(),
        [
            "module.on_load_checkpoint(6)",
            "callback.on_load_checkpoint(Some(6))",
            "callback.load_state_dict(6)",
        ]
    );
    // the callback counted on from its restored state: 6 + 6 batches
    assert_eq!(t.callback::<Recorder>().unwrap().count, 12);

    // a file without the datamodule's key leaves its state alone (Lightning's rule)
    let other = Arc::new(Mutex::new(Prepared::default()));
    let dm = data(64, 8, true).state("OtherName", other.clone());
    let (mut m, _vs) = hooked(&Journal::default(), 5);
    trainer(dir.path(), 2, &Journal::default(), &[])
        .fit(&mut m, &dm, Some(CkptPath::from(&file)))
        .unwrap();
    assert!(other.lock().unwrap().loaded.is_empty());

    // a datamodule whose state does not load fails the resume, naming it
    let dm = data(64, 8, true).state("PreparedDataModule", Arc::new(Mutex::new(Broken)));
    let (mut m, _vs) = hooked(&Journal::default(), 5);
    let e = trainer(dir.path(), 2, &Journal::default(), &[])
        .fit(&mut m, &dm, Some(CkptPath::from(&file)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step6.ckpt") && e.contains("datamodule state \"PreparedDataModule\""),
        "{e}"
    );
}

struct Broken;
impl DataModuleState for Broken {
    fn load_state_dict(&mut self, _state: &Value) -> lightning_core::Result<()> {
        Err(Error::Msg("cannot".into()))
    }
}

/// An empty datamodule state writes no key (Lightning: `if datamodule_state_dict:`).
#[test]
fn an_empty_datamodule_state_is_not_saved() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let dm = data(64, 8, true).state("Nothing", Arc::new(Mutex::new(Broken)));
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 1);
    let mut t = Trainer::builder()
        .max_epochs(1)
        .enable_progress_bar(false)
        .logger(false)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    let file = dir.path().join("x.ckpt");
    t.save_checkpoint(&m, &file, false).unwrap();
    assert!(checkpoint::load(&file).unwrap().get("Nothing").is_none());
}

/// `load_from_checkpoint` calls the module's `on_load_checkpoint` (with the whole dict),
/// before the weights are loaded.
#[test]
fn load_from_checkpoint_calls_on_load_checkpoint() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::default();
    let (mut m, _vs) = hooked(&journal, 1);
    trainer(dir.path(), 1, &journal, &[3])
        .fit(&mut m, &data(64, 8, true), None)
        .unwrap();
    let file = dir.path().join("ckpts/step3.ckpt");
    let loaded = Hooked::load_from_checkpoint(&file).unwrap();
    assert_eq!(
        *loaded.journal.lock().unwrap(),
        ["module.on_load_checkpoint(3)"]
    );
    // a file without the key: the hook's error surfaces
    let plain = dir.path().join("plain.ckpt");
    let (t, _vs) = Tiny::new(TinyHp::default(), 2);
    checkpoint::save(
        &plain,
        &lightning_core::checkpoint_loader::checkpoint_value(&t),
    )
    .unwrap();
    let e = Hooked::load_from_checkpoint(&plain).err().unwrap();
    assert!(e.to_string().contains("no module_extra"), "{e}");
}

fn metrics_of(
    t: &mut Trainer,
    m: &mut Tiny,
    dm: &DataModule,
    ckpt: Option<CkptPath>,
) -> (f64, f64, Vec<i64>) {
    let v = t.validate(m, dm, ckpt.clone()).unwrap()["val_loss"];
    let te = t.test(m, dm, ckpt.clone()).unwrap()["test_loss"];
    let p = t.predict(m, dm, ckpt).unwrap();
    let p: Vec<i64> = p
        .iter()
        .flat_map(|x| Vec::<i64>::try_from(x).unwrap())
        .collect();
    (v, te, p)
}

/// `validate`/`test`/`predict` with `ckpt_path` evaluate that file's weights: a path, "best"
/// (the checkpoint callback's best file) and "last" (the newest `last*.ckpt`) give the
/// metrics of a model loaded from the same file; without one, the model's own weights.
#[test]
fn ckpt_path_selects_the_weights_of_validate_test_and_predict() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let dm = data(64, 8, true);
    let ck = dir.path().join("ck");
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 1);
    let mut t = Trainer::builder()
        .max_epochs(3)
        .enable_progress_bar(false)
        .logger(false)
        .seed(3)
        .default_root_dir(dir.path())
        .callback(
            lightning_core::callbacks::ModelCheckpoint::builder()
                .dirpath(&ck)
                .monitor("val_loss")
                .save_top_k(-1)
                .save_last(lightning_core::callbacks::SaveLast::True)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    let best = t
        .callback::<lightning_core::callbacks::ModelCheckpoint>()
        .unwrap()
        .best_model_path()
        .unwrap();
    let expect = |path: &Path| {
        let mut loaded = Tiny::load_from_checkpoint(path).unwrap();
        let mut plain = Trainer::builder()
            .enable_progress_bar(false)
            .logger(false)
            .build()
            .unwrap();
        metrics_of(&mut plain, &mut loaded, &dm, None)
    };
    let want_best = expect(best);
    let want_last = expect(&ck.join("last.ckpt"));
    let want_e0 = expect(&ck.join("epoch=0-step=6.ckpt"));
    // the model's own weights are the last epoch's
    assert_eq!(metrics_of(&mut t, &mut m, &dm, None), want_last);
    let (mut m0, _vs) = Tiny::new(TinyHp::default(), 42);
    assert_eq!(
        metrics_of(&mut t, &mut m0, &dm, Some(CkptPath::parse("best"))),
        want_best
    );
    let (mut m0, _vs) = Tiny::new(TinyHp::default(), 42);
    assert_eq!(
        metrics_of(&mut t, &mut m0, &dm, Some(CkptPath::parse("last"))),
        want_last
    );
    let (mut m0, _vs) = Tiny::new(TinyHp::default(), 42);
    let p = ck.join("epoch=0-step=6.ckpt");
    let got = metrics_of(
        &mut t,
        &mut m0,
        &dm,
        Some(CkptPath::parse(p.to_str().unwrap())),
    );
    assert_eq!(got, want_e0);
    assert_ne!(
        want_e0, want_last,
        "epoch 0's weights differ from the last epoch's"
    );
    // a path that is not there is an error naming it
    let (mut m0, _vs) = Tiny::new(TinyHp::default(), 42);
    let e = t
        .validate(
            &mut m0,
            &dm,
            Some(CkptPath::from(dir.path().join("no.ckpt"))),
        )
        .unwrap_err();
    assert!(e.to_string().contains("no.ckpt"), "{e}");
    // "best" without a checkpoint callback is an error
    let mut bare = Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .build()
        .unwrap();
    let e = bare
        .test(&mut m0, &dm, Some(CkptPath::Best))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ckpt_path=\"best\""), "{e}");
}

/// Lightning side of the datamodule round trip: `argv[1]` is our checkpoint (datamodule state
/// `{"epochs": 7}` under `PreparedDataModule`); Lightning resumes from it with a datamodule of
/// that class, then saves its own file `argv[2]` with `{"epochs": 11}`.
const PY_DM: &str = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
from torch.utils.data import DataLoader, TensorDataset
ours, theirs = sys.argv[1], sys.argv[2]
class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, epochs):
        super().__init__(); self.epochs = epochs; self.loaded = []
    def train_dataloader(self):
        torch.manual_seed(0)
        x = torch.randn(48, 4)
        return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)
    def state_dict(self):
        return {"epochs": self.epochs}
    def load_state_dict(self, s):
        self.loaded.append(s["epochs"])
dm = PreparedDataModule(0)
t = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
               enable_checkpointing=False)
t.fit(Tiny(), datamodule=dm, ckpt_path=ours)
dm.epochs = 11
t.save_checkpoint(theirs)
print(json.dumps({"loaded": dm.loaded}))
"#;

/// Our datamodule state reaches Lightning's `LightningDataModule.load_state_dict` on its
/// resume, and Lightning's saved state reaches ours.
#[test]
fn datamodule_state_is_shared_with_lightning() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(Mutex::new(Prepared {
        epochs: 7,
        ..Default::default()
    }));
    let dm = data(64, 8, true).state("PreparedDataModule", state);
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 1);
    let mut t = Trainer::builder()
        .max_epochs(1)
        .enable_progress_bar(false)
        .logger(false)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, None).unwrap();
    let ours = dir.path().join("ours.ckpt");
    t.save_checkpoint(&m, &ours, false).unwrap();
    let theirs = dir.path().join("theirs.ckpt");
    let Some(out) = lightning_testkit::run_python_within(
        &format!("{}\n{PY_DM}", trainer_util::PY_TINY),
        &[ours.to_str().unwrap(), theirs.to_str().unwrap()],
        std::time::Duration::from_secs(120),
    ) else {
        return;
    };
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        got["loaded"],
        serde_json::json!([7]),
        "Lightning read our state"
    );
    // and back: our resume from Lightning's file restores its state
    let fresh = Arc::new(Mutex::new(Prepared::default()));
    let dm = data(64, 8, true).state("PreparedDataModule", fresh.clone());
    let (mut m, _vs) = Tiny::new(TinyHp::default(), 3);
    let mut t = Trainer::builder()
        .max_epochs(3)
        .enable_progress_bar(false)
        .logger(false)
        .enable_checkpointing(false)
        .build()
        .unwrap();
    t.fit(&mut m, &dm, Some(CkptPath::from(&theirs))).unwrap();
    assert_eq!(fresh.lock().unwrap().loaded, vec![11]);
}
