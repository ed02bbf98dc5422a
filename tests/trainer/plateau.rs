//! `ReduceLROnPlateau` in the trainer: stepped with its `monitor` after the epoch-end hooks
//! (Lightning's order), exact across a resume (the monitored value saved with the run's
//! position), and Lightning's errors for a missing monitor.

use lightning_testkit::trainer_util;

use lightning_core::lightning_module::{OptimizerConfig, SchedulerConfig, StepContext};
use lightning_core::optim::{Adam, AdamConfig, PlateauConfig, PlateauMode, ReduceLROnPlateau};
use lightning_core::prelude::*;
use lightning_core::trainer::{CkptPath, Trainer};
use trainer_util::{data, Tiny, TinyHp};

/// Tiny with Adam and a `ReduceLROnPlateau` on `monitor` (patience 0, factor 0.5, `Max`
/// mode on a loss: every epoch that lowers it counts as bad, so the lr halves each epoch).
struct OnPlateau {
    tiny: Tiny,
    monitor: Option<&'static str>,
    strict: bool,
}

lightning_testkit::wraps_tiny!(OnPlateau, tiny);

impl LightningModule for OnPlateau {
    fn build(hp: &TinyHp, vs: &tch::nn::Path) -> lightning_core::Result<Self> {
        Ok(OnPlateau {
            tiny: Tiny::build(hp, vs)?,
            monitor: Some("val_loss"),
            strict: true,
        })
    }
    fn training_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<tch::Tensor> {
        self.tiny.training_step(b, i, ctx)
    }
    fn validation_step(
        &mut self,
        b: &Batch,
        i: usize,
        ctx: &mut StepContext,
    ) -> lightning_core::Result<()> {
        self.tiny.validation_step(b, i, ctx)
    }
    fn configure_optimizers(&self) -> lightning_core::Result<OptimizerConfig> {
        let opt = Adam::new(
            self.parameters(),
            AdamConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?;
        let cfg = PlateauConfig {
            mode: PlateauMode::Max,
            patience: 0,
            factor: 0.5,
            ..Default::default()
        };
        let mut s = SchedulerConfig::new(ReduceLROnPlateau::new(&opt, cfg)?)
            .strict(self.strict)
            .name("plateau-lr");
        if let Some(m) = self.monitor {
            s = s.monitor(m);
        }
        Ok(OptimizerConfig::new(opt).scheduler_config(s))
    }
}

fn model(monitor: Option<&'static str>, strict: bool) -> (OnPlateau, tch::nn::VarStore) {
    tch::manual_seed(3);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut m = OnPlateau::build(
        &TinyHp {
            dropout: 0.0,
            ..TinyHp::default()
        },
        &vs.root(),
    )
    .unwrap();
    m.monitor = monitor;
    m.strict = strict;
    (m, vs)
}

fn trainer(root: &std::path::Path, epochs: i64) -> Trainer {
    let ckpt = lightning_core::callbacks::ModelCheckpoint::builder()
        .dirpath(root.join("ck"))
        .save_last(lightning_core::callbacks::SaveLast::True)
        .build()
        .unwrap();
    Trainer::builder()
        .enable_progress_bar(false)
        .enable_model_summary(false)
        .seed(5)
        .default_root_dir(root)
        .max_epochs(epochs)
        .callback(ckpt)
        .callback(lightning_core::callbacks::LearningRateMonitor::new())
        .build()
        .unwrap()
}

fn state(t: &mut Trainer, m: &OnPlateau, p: &std::path::Path) -> Value {
    t.save_checkpoint(m, p, false).unwrap();
    let mut v = lightning_core::checkpoint::load(p).unwrap();
    for k in ["callbacks", "lightning_rs"] {
        if let Value::Dict(d) = &mut v {
            d.shift_remove(&lightning_core::Key::from(k));
        }
    }
    v
}

#[test]
fn plateau_steps_after_the_epoch_end_and_resumes_exactly() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _va) = model(Some("val_loss"), true);
    let mut t = trainer(&dir.path().join("straight"), 4);
    t.fit(&mut a, &data(64, 8, true), None).unwrap();
    let straight = state(&mut t, &a, &dir.path().join("a.ckpt"));
    let lr = straight
        .get_path("optimizer_states.0.param_groups.0.lr")
        .and_then(Value::as_f64)
        .unwrap();
    assert!(lr < 0.05, "the lr dropped on the plateau: {lr}");
    // LearningRateMonitor logs it under the scheduler config's name (Lightning's `name`).
    let monitor = t
        .callback::<lightning_core::callbacks::LearningRateMonitor>()
        .unwrap();
    let logged = monitor.lrs();
    assert_eq!(
        logged.keys().collect::<Vec<_>>(),
        ["plateau-lr"],
        "{logged:?}"
    );
    // logged at each epoch's start: the last one before the final epoch's drop (factor 0.5)
    assert_eq!(logged["plateau-lr"].last().copied(), Some(lr / 0.5));
    let plateau = straight.get_path("lr_schedulers.0").unwrap();
    assert_eq!(
        plateau.get("last_epoch").and_then(Value::as_i64),
        Some(4),
        "one step per epoch"
    );

    let root = dir.path().join("resumed");
    let (mut b, _vb) = model(Some("val_loss"), true);
    trainer(&root, 2)
        .fit(&mut b, &data(64, 8, true), None)
        .unwrap();
    let (mut c, _vc) = model(Some("val_loss"), true);
    let mut t = trainer(&root, 4);
    t.fit(&mut c, &data(64, 8, true), Some(CkptPath::Last))
        .unwrap();
    let resumed = state(&mut t, &c, &dir.path().join("c.ckpt"));
    assert_eq!(resumed, straight, "2 epochs + resume to 4 == 4 straight");
}

#[test]
fn a_missing_monitor_is_lightnings_error_and_strict_false_skips() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _v) = model(None, true);
    let e = trainer(dir.path(), 1)
        .fit(&mut m, &data(64, 8, true), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("must include a monitor when a `ReduceLROnPlateau`"),
        "{e}"
    );
    let (mut m, _v) = model(Some("nope"), true);
    let e = trainer(dir.path(), 1)
        .fit(&mut m, &data(64, 8, true), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conditioned on metric nope which is not available") && e.contains("val_loss"),
        "{e}"
    );
    let (mut m, _v) = model(Some("nope"), false);
    let mut t = trainer(dir.path(), 2);
    t.fit(&mut m, &data(64, 8, true), None).unwrap();
    let v = state(&mut t, &m, &dir.path().join("x.ckpt"));
    assert_eq!(
        v.get_path("optimizer_states.0.param_groups.0.lr")
            .and_then(Value::as_f64),
        Some(0.05)
    );
    assert_eq!(
        v.get_path("lr_schedulers.0.last_epoch")
            .and_then(Value::as_i64),
        Some(0)
    );
}
