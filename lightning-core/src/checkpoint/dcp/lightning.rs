//! Lightning's sharded checkpoint layout (`FSDPStrategy(state_dict_type="sharded")`): a
//! directory holding a DCP checkpoint of `{"model": ..., "optimizer_0": ...}` (optimizer
//! state keyed by parameter name) and `meta.pt`, a `torch.save` of everything else (epoch,
//! loops, callbacks, schedulers, hyperparameters). `ModelParallelStrategy` names the model's
//! part `state_dict`.

use super::{DcpReader, METADATA_FILE};
use crate::checkpoint::CheckpointError;
use crate::value::{Dict, Key, Value};
use std::path::Path;

/// The file beside the DCP part that holds the rest of the checkpoint.
pub const META_FILE: &str = "meta.pt";

/// Whether `dir` is a sharded checkpoint in Lightning's layout (or any DCP directory): a
/// local directory, or a prefix on object storage (`s3://bucket/run/last.ckpt`), holding a
/// `.metadata`.
pub fn is_sharded_checkpoint(dir: &Path) -> bool {
    crate::storage::files::dir_has(dir, METADATA_FILE)
}

/// The parameter a tensor item of the sharded layout belongs to, by its dotted key:
/// `model.<name>` (or `state_dict.<name>`), or `optimizer_<i>.state.<name>.<field>`.
pub fn param_of_key(key: &str) -> Option<&str> {
    if let Some(n) = key
        .strip_prefix("model.")
        .or_else(|| key.strip_prefix("state_dict."))
    {
        return Some(n);
    }
    let rest = key.strip_prefix("optimizer_")?;
    let (_, rest) = rest.split_once(".state.")?;
    rest.rsplit_once('.').map(|(n, _)| n)
}

/// An optimizer state keyed by parameter index (torch's `state_dict()`: `state` by index,
/// each group's `params` a list of indices) re-keyed by the parameter names `names[index]`,
/// as Lightning's FSDP strategy saves it.
pub fn optimizer_state_by_name(state: &Value, names: &[String]) -> Result<Value, String> {
    let name = |v: &Value| -> Result<Value, String> {
        let i = match v {
            Value::Int(i) => *i,
            other => return Err(format!("a parameter index is a {}", other.type_name())),
        };
        usize::try_from(i)
            .ok()
            .and_then(|i| names.get(i))
            .map(|n| Value::Str(n.clone()))
            .ok_or(format!("parameter index {i} of {} parameters", names.len()))
    };
    let mut out = state.clone();
    if let Some(Value::Dict(s) | Value::OrderedDict(s)) = out.get_mut("state") {
        let mut renamed = Dict::with_capacity(s.len());
        for (k, v) in std::mem::take(s) {
            let Value::Str(n) = name(&Value::Int(match k {
                Key::Int(i) => i,
                Key::Str(s) => s
                    .parse()
                    .map_err(|_| format!("state key {s:?} is not an index"))?,
            }))?
            else {
                unreachable!("name() returns strings")
            };
            renamed.insert(Key::Str(n), v);
        }
        *s = renamed;
    }
    if let Some(Value::List(groups)) = out.get_mut("param_groups") {
        for g in groups {
            if let Some(Value::List(ps)) = g.get_mut("params") {
                for p in ps.iter_mut() {
                    *p = name(p)?;
                }
            }
        }
    }
    Ok(out)
}

/// The inverse of [`optimizer_state_by_name`] for a state saved by name: parameters numbered
/// in the order the groups list them (torch's rule), `state` re-keyed by those numbers, and
/// the names kept in each group's `param_names` (as torch keeps them for an optimizer built
/// from named parameters), so a reader can match them to its own order
/// ([`reorder_optimizer_state`]).
pub fn optimizer_state_by_index(state: &Value) -> Result<Value, String> {
    let mut out = state.clone();
    let mut index: Vec<String> = Vec::new();
    if let Some(Value::List(groups)) = out.get_mut("param_groups") {
        for g in groups {
            let mut names = Vec::new();
            if let Some(Value::List(ps)) = g.get_mut("params") {
                for p in ps.iter_mut() {
                    match p {
                        Value::Str(n) => {
                            index.push(n.clone());
                            names.push(Value::Str(n.clone()));
                            *p = Value::Int(index.len() as i64 - 1);
                        }
                        Value::Int(_) => {}
                        other => return Err(format!("a group's param is a {}", other.type_name())),
                    }
                }
            }
            if !names.is_empty() {
                g.insert("param_names", Value::List(names));
            }
        }
    }
    if let Some(Value::Dict(s) | Value::OrderedDict(s)) = out.get_mut("state") {
        let mut renumbered = Dict::with_capacity(s.len());
        for (k, v) in std::mem::take(s) {
            let k = match k {
                Key::Str(n) => match index.iter().position(|x| *x == n) {
                    Some(i) => Key::Int(i as i64),
                    None => return Err(format!("state of {n:?}, which no param group lists")),
                },
                k => k,
            };
            renumbered.insert(k, v);
        }
        *s = renumbered;
    }
    Ok(out)
}

/// Re-keys an optimizer state (torch's layout) whose groups name their parameters
/// (`param_names`) to the order `ours` of the optimizer that loads it: the state of the
/// parameter named `ours[k]` under index `k`. A state without names is left as it is.
pub fn reorder_optimizer_state(state: &mut Value, ours: &[String]) -> Result<(), String> {
    let mut saved: Vec<String> = Vec::new();
    if let Some(Value::List(groups)) = state.get("param_groups") {
        for g in groups {
            if let Some(Value::List(ns)) = g.get("param_names") {
                for n in ns {
                    match n {
                        Value::Str(s) => saved.push(s.clone()),
                        other => return Err(format!("a param name is a {}", other.type_name())),
                    }
                }
            }
        }
    }
    if saved.is_empty() || saved == ours {
        return Ok(());
    }
    let perm: Vec<i64> = saved
        .iter()
        .map(|n| {
            ours.iter()
                .position(|o| o == n)
                .map(|i| i as i64)
                .ok_or(format!(
                "the checkpoint has optimizer state for {n:?}, which this optimizer does not hold"
            ))
        })
        .collect::<Result<_, _>>()?;
    if let Some(Value::Dict(s) | Value::OrderedDict(s)) = state.get_mut("state") {
        let mut renumbered = Dict::with_capacity(s.len());
        for (k, v) in std::mem::take(s) {
            let k = match k {
                Key::Int(j) => Key::Int(
                    *perm
                        .get(j as usize)
                        .ok_or(format!("state index {j} of {} parameters", perm.len()))?,
                ),
                k => k,
            };
            renumbered.insert(k, v);
        }
        *s = renumbered;
    }
    if let Some(Value::List(groups)) = state.get_mut("param_groups") {
        for g in groups {
            if let Some(Value::List(ps)) = g.get_mut("params") {
                for p in ps.iter_mut() {
                    if let Value::Int(j) = p {
                        *j = *perm.get(*j as usize).ok_or(format!("param index {j}"))?;
                    }
                }
            }
            let names: Option<Vec<Value>> = match g.get("params") {
                Some(Value::List(ps)) => ps
                    .iter()
                    .map(|p| match p {
                        Value::Int(j) => ours.get(*j as usize).map(|n| Value::Str(n.clone())),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            if let Some(n) = names {
                g.insert("param_names", Value::List(n));
            }
        }
    }
    Ok(())
}

/// Reads a sharded checkpoint directory whole, as the single-file checkpoint Lightning's
/// `consolidate_checkpoint` makes of it: `meta.pt`'s entries, `state_dict` (from `model` or
/// `state_dict`), and `optimizer_states` (from `optimizer_0`, `optimizer_1`, ..., re-keyed by
/// index). Without `meta.pt`, just the state.
pub fn load(dir: &Path) -> Result<Value, CheckpointError> {
    load_rows(dir, &|_, _| None)
}

/// Where our `meta.pt` names the DCP save it belongs to (under `lightning_rs`).
const SAVE_ID_KEY: &str = "dcp_save_id";

/// Writes `save_id` (the `.metadata`'s `storage_meta.save_id`) into `meta.pt`'s value, so a
/// reader can tell a `meta.pt` and a `.metadata` of different saves apart (object storage
/// writes them as two objects, with no rename to make them appear together).
pub fn stamp_save_id(meta: &mut Value, save_id: &str) {
    if !matches!(meta.get("lightning_rs"), Some(Value::Dict(_))) {
        meta.insert("lightning_rs", Value::dict());
    }
    if let Some(own) = meta.get_mut("lightning_rs") {
        own.insert(SAVE_ID_KEY, save_id);
    }
}

/// After a save under the object-storage prefix `prefix` completed (its `.metadata` names
/// only files of save `token`): removes the shard files earlier saves left there. Best
/// effort: a file left behind is only unused space (warned).
pub fn remove_other_saves_files(prefix: &Path, token: &str) {
    let ours = format!("-{token}.distcp");
    let objects = match crate::storage::object::list(prefix) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(
                "could not list {} to remove old shard files: {e}",
                prefix.display()
            );
            return;
        }
    };
    for o in objects {
        let name = o.path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name.filter(|n| n.ends_with(".distcp") && !n.ends_with(&ours))
            && let Err(e) = crate::storage::object::remove(&o.path)
        {
            tracing::warn!("could not remove the old shard file {name}: {e}");
        }
    }
}

/// Runs `read` on `dir`, or, for a URL, on a local copy of its objects.
fn local<T>(
    dir: &Path,
    read: impl FnOnce(&Path) -> Result<T, CheckpointError>,
) -> Result<T, CheckpointError> {
    if crate::storage::is_url(dir) {
        let copy = crate::storage::files::fetch_dir(dir)?;
        return read(copy.path());
    }
    read(dir)
}

/// Which rows of a tensor item to read: `(key, whole size)` -> rows `[lo, hi)` of dim 0, or
/// `None` for all of it.
pub type RowsFn<'a> = dyn Fn(&str, &[i64]) -> Option<(i64, i64)> + 'a;

/// [`load`], reading of each tensor item only the rows `rows` names (a sharded run's resume
/// reads its own rows of every parameter and optimizer state, not the whole state).
pub fn load_rows(dir: &Path, rows: &RowsFn<'_>) -> Result<Value, CheckpointError> {
    local(dir, |d| load_rows_local(d, dir, rows))
}

fn load_rows_local(dir: &Path, named: &Path, rows: &RowsFn<'_>) -> Result<Value, CheckpointError> {
    let r = DcpReader::open(dir)?;
    let mut items = Vec::with_capacity(r.metadata().items.len());
    for (key, item) in &r.metadata().items {
        let v = match item {
            super::ItemMeta::Tensor(t) if !t.size.is_empty() => match rows(key, &t.size) {
                Some((lo, hi)) => {
                    let mut offsets = vec![0; t.size.len()];
                    offsets[0] = lo;
                    let mut sizes = t.size.clone();
                    sizes[0] = hi - lo;
                    Value::Tensor(r.read_block(key, &offsets, &sizes)?)
                }
                None => r.read_value(key)?,
            },
            _ => r.read_value(key)?,
        };
        items.push((r.path_of(key), v));
    }
    let state = super::unflatten(items).map_err(|e| CheckpointError::Format {
        path: named.to_owned(),
        msg: e,
    })?;
    let meta_path = dir.join(META_FILE);
    let mut ckpt = if meta_path.is_file() {
        crate::checkpoint::load(&meta_path)?
    } else {
        Value::dict()
    };
    let fmt = |msg: String| CheckpointError::Format {
        path: named.to_owned(),
        msg,
    };
    let stamped = ckpt
        .get("lightning_rs")
        .and_then(|o| o.get(SAVE_ID_KEY))
        .and_then(Value::as_str);
    if let (Some(meta_id), Some(dcp_id)) = (stamped, r.metadata().save_id.as_deref())
        && meta_id != dcp_id
    {
        return Err(fmt(format!(
            "meta.pt belongs to save {meta_id}, .metadata to save {dcp_id}: a save was \
             interrupted between writing the two (object storage writes them one after \
             the other); the shards are .metadata's, the training state meta.pt's"
        )));
    }
    let Value::Dict(mut parts) = state else {
        return Err(fmt("the DCP state is not a dict".into()));
    };
    let model = parts
        .shift_remove(&Key::from("model"))
        .or_else(|| parts.shift_remove(&Key::from("state_dict")));
    if let Some(Value::Dict(m) | Value::OrderedDict(m)) = model {
        ckpt.insert("state_dict", Value::OrderedDict(m));
    }
    let mut optimizers = Vec::new();
    while let Some(o) = parts.shift_remove(&Key::Str(format!("optimizer_{}", optimizers.len()))) {
        let i = optimizers.len();
        optimizers
            .push(optimizer_state_by_index(&o).map_err(|e| fmt(format!("optimizer_{i}: {e}")))?);
    }
    if !optimizers.is_empty() {
        ckpt.insert("optimizer_states", Value::List(optimizers));
    }
    for (k, v) in parts {
        ckpt.insert(k.to_string(), v);
    }
    Ok(ckpt)
}

/// Splits a checkpoint in Lightning's single-file layout into the sharded layout's parts:
/// the DCP state (`model`, `optimizer_{i}` keyed by the names `names[i]`) and `meta.pt`'s
/// value (the rest).
pub fn split(ckpt: &Value, names: &[Vec<String>]) -> Result<(Value, Value), String> {
    let mut meta = ckpt.clone();
    let mut state = Value::dict();
    let Value::Dict(m) = &mut meta else {
        return Err("the checkpoint is not a dict".into());
    };
    match m.shift_remove(&Key::from("state_dict")) {
        Some(Value::Dict(sd) | Value::OrderedDict(sd)) => {
            state.insert("model", Value::Dict(sd));
        }
        Some(other) => return Err(format!("state_dict is a {}", other.type_name())),
        None => {}
    }
    if let Some(Value::List(opts)) = m.shift_remove(&Key::from("optimizer_states")) {
        for (i, o) in opts.iter().enumerate() {
            let n = names
                .get(i)
                .ok_or(format!("no parameter names for optimizer {i}"))?;
            state.insert(format!("optimizer_{i}"), optimizer_state_by_name(o, n)?);
        }
    }
    Ok((state, meta))
}
