//! What `ModelCheckpoint` saves in a checkpoint's `callbacks` dict and restores on resume.

use super::ModelCheckpoint;
use crate::callbacks::{Callback, CallbackError};
use crate::pyfmt;
use crate::value::{Dict, Key, Value};
use indexmap::IndexMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

impl ModelCheckpoint {
    fn path_str(p: &Option<PathBuf>) -> Value {
        Value::Str(
            p.as_ref()
                .map_or(String::new(), |p| p.to_string_lossy().into_owned()),
        )
    }

    /// The state saved in checkpoints: Lightning's keys; scores as 0-dim float64 tensors, paths as strings (`""` for none).
    pub(super) fn saved_state(&self) -> Value {
        let mut d = Value::dict();
        d.insert("monitor", Value::from(self.monitor.clone()));
        d.insert(
            "best_model_score",
            self.book.best_model_score.map_or(Value::None, score_tensor),
        );
        d.insert(
            "best_model_path",
            Self::path_str(&self.book.best_model_path),
        );
        d.insert(
            "current_score",
            self.book.current_score.map_or(Value::None, score_tensor),
        );
        d.insert(
            "dirpath",
            Value::from(
                self.dirpath
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
        );
        let mut models = Dict::new();
        for (p, s) in &self.book.best_k_models {
            models.insert(Key::Str(p.to_string_lossy().into_owned()), score_tensor(*s));
        }
        d.insert("best_k_models", Value::Dict(models));
        d.insert(
            "kth_best_model_path",
            Self::path_str(&self.book.kth_best_model_path),
        );
        d.insert("kth_value", score_tensor(self.book.kth_value));
        d.insert(
            "last_model_path",
            Self::path_str(&self.book.last_model_path),
        );
        d
    }

    /// Applies a saved state (Lightning's `load_state_dict` rule: everything only when the
    /// saved `dirpath` equals ours, else just `best_model_path`, with a warning).
    pub(super) fn apply_state(&mut self, state: &Value) -> Result<(), CallbackError> {
        let key = self.state_key();
        let err = |k: &str, msg: String| CallbackError::State {
            state_key: key.clone(),
            key: k.to_owned(),
            msg,
        };
        if state.as_dict().is_none() {
            return Err(err(
                "",
                format!("expected a dict, found {}", state.type_name()),
            ));
        }
        let ours = self
            .dirpath
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned());
        let from_ckpt = match state.get("dirpath") {
            None => ours.clone(),
            Some(Value::None) => None,
            Some(Value::Str(s)) => Some(s.clone()),
            Some(v) => {
                return Err(err(
                    "dirpath",
                    format!("expected str, found {}", v.type_name()),
                ))
            }
        };
        let get_path = |k: &str| -> Result<Option<Option<PathBuf>>, CallbackError> {
            match state.get(k) {
                None => Ok(None),
                Some(Value::None) => Ok(Some(None)),
                Some(Value::Str(s)) if s.is_empty() => Ok(Some(None)),
                Some(Value::Str(s)) => Ok(Some(Some(PathBuf::from(s)))),
                Some(v) => Err(err(k, format!("expected str, found {}", v.type_name()))),
            }
        };
        let best_model_path =
            get_path("best_model_path")?.ok_or_else(|| err("best_model_path", "missing".into()))?;
        let mut book = self.book.clone();
        if from_ckpt == ours {
            let score = state
                .get("best_model_score")
                .ok_or_else(|| err("best_model_score", "missing".into()))?;
            book.best_model_score = score_value(score).map_err(|m| err("best_model_score", m))?;
            if let Some(p) = get_path("kth_best_model_path")? {
                book.kth_best_model_path = p;
            }
            if let Some(v) = state.get("kth_value")
                && let Some(x) = score_value(v).map_err(|m| err("kth_value", m))?
            {
                book.kth_value = x;
            }
            if let Some(v) = state.get("best_k_models") {
                let d = v.as_dict().ok_or_else(|| {
                    err(
                        "best_k_models",
                        format!("expected dict, found {}", v.type_name()),
                    )
                })?;
                let mut models = IndexMap::new();
                for (k, s) in d {
                    let Key::Str(p) = k else {
                        return Err(err("best_k_models", format!("non-string key {k}")));
                    };
                    let s = score_value(s)
                        .map_err(|m| err("best_k_models", format!("{p}: {m}")))?
                        .unwrap_or(self.mode.worst());
                    models.insert(PathBuf::from(p), s);
                }
                book.best_k_models = models;
            }
            if let Some(p) = get_path("last_model_path")? {
                book.last_model_path = p;
            }
        } else {
            tracing::warn!(
                "The dirpath has changed from {} to {}, therefore `best_model_score`, \
                 `kth_best_model_path`, `kth_value`, `last_model_path` and `best_k_models` won't \
                 be reloaded. Only `best_model_path` will be reloaded.",
                from_ckpt.as_deref().map_or("None".into(), pyfmt::repr_str),
                ours.as_deref().map_or("None".into(), pyfmt::repr_str),
            );
        }
        book.best_model_path = best_model_path;
        self.book = book;
        Ok(())
    }
}

/// A score stored in a state: a one-element tensor (what Lightning stores), a float or int,
/// or `None`.
fn score_value(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::None => Ok(None),
        Value::Float(x) => Ok(Some(*x)),
        Value::Int(i) => Ok(Some(*i as f64)),
        Value::Tensor(t) if t.numel() == 1 => t
            .reshape([-1])
            .f_double_value(&[0])
            .map(Some)
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a one-element tensor, a number or None, found {}",
            other.type_name()
        )),
    }
}

/// A 0-dim float64 tensor (Lightning stores scores as tensors; float64 keeps ours exact).
fn score_tensor(x: f64) -> Value {
    Value::Tensor(
        Tensor::from_slice(&[x])
            .reshape([])
            .to_kind(Kind::Double)
            .to_device(Device::Cpu),
    )
}
