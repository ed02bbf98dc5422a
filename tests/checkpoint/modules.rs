//! End to end with modules: a Rust module saved by our writer is rebuilt by Python's
//! `LightningModule.load_from_checkpoint`, and a Python Lightning checkpoint is rebuilt by
//! Rust's `load_from_checkpoint`; both give the same outputs on a probe input.

use crate::common;
use lightning_testkit::trainer_util;

use lightning_core::checkpoint::{self, schema::Checkpoint};
use lightning_core::prelude::*;
use lightning_core::traverse::state_dict_to_value;
use tch::{Device, Kind, Tensor};
use trainer_util::{Tiny, TinyHp};

/// The Python twin of `trainer_util::Tiny`, and the probe.
fn py_tiny() -> String {
    format!(
        "{}\nprobe = torch.linspace(-1.0, 1.0, 12).reshape(3, 4)\n",
        trainer_util::PY_TINY
    )
}

fn probe() -> Tensor {
    Tensor::linspace(-1.0, 1.0, 12, (Kind::Float, Device::Cpu)).reshape([3, 4])
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).contiguous().view([-1])).unwrap()
}

fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn rust_module_checkpoint_loads_in_python_lightning() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rust_tiny.ckpt");
    let hp = TinyHp {
        hidden: 6,
        dropout: 0.5,
        ..TinyHp::default()
    };
    let (m, _vs) = Tiny::new(hp.clone(), 5);
    let ck = Checkpoint {
        epoch: 0,
        global_step: 0,
        state_dict: state_dict_to_value(&m.state_dict())
            .as_dict()
            .unwrap()
            .clone(),
        hparams_name: Some("kwargs".into()),
        hyper_parameters: hp.to_value().as_dict().cloned(),
        ..Default::default()
    };
    checkpoint::save(&p, &ck.to_value()).unwrap();
    let ours = values(&tch::no_grad(|| m.forward(&probe(), false)));
    let script = format!(
        "{}\nm = Tiny.load_from_checkpoint(sys.argv[1]).eval()\nwith torch.no_grad():\n    y = m(probe)\n\
         print(json.dumps({{'y': y.flatten().tolist(), 'hidden': m.hparams.hidden, 'dropout': m.hparams.dropout}}))",
        py_tiny()
    );
    let Some(out) = common::python(&script, &[p.to_str().unwrap()]) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(got["hidden"], 6);
    assert_eq!(got["dropout"], 0.5);
    assert_close(
        &serde_json::from_value::<Vec<f64>>(got["y"].clone()).unwrap(),
        &ours,
    );
}

#[test]
fn python_lightning_checkpoint_loads_as_a_rust_module() {
    let _serial = trainer_util::serial();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{}\nimport warnings; warnings.filterwarnings('ignore')\n\
         from torch.utils.data import DataLoader, TensorDataset\ntorch.manual_seed(0)\n\
         x = torch.randn(32, 4); y = (x[:, 0] > 0).long()\n\
         t = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,\n\
             default_root_dir=sys.argv[1], callbacks=[pl.callbacks.ModelCheckpoint(dirpath=sys.argv[1], filename='py')])\n\
         m = Tiny(hidden=5, dropout=0.1)\nt.fit(m, DataLoader(TensorDataset(x, y), batch_size=8))\nm.eval()\n\
         with torch.no_grad():\n    out = m(probe)\nprint(json.dumps(out.flatten().tolist()))",
        py_tiny()
    );
    let Some(out) = common::python(&script, &[dir.path().to_str().unwrap()]) else {
        return;
    };
    let py: Vec<f64> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let m = Tiny::load_from_checkpoint(dir.path().join("py.ckpt")).unwrap();
    assert_eq!(m.hparams().hidden, 5);
    assert_eq!(m.hparams().dropout, 0.1);
    let ours = values(&tch::no_grad(|| m.forward(&probe(), false)));
    assert_close(&py, &ours);
}
