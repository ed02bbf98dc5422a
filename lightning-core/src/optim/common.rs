//! Helpers shared by the optimizers: parsing `torch.optim` state dicts with clear errors.

use super::OptimError;
use crate::value::{Dict, Key, Value};
use tch::Tensor;

/// The `state` entries of a saved optimizer, matched to our parameters by position, and the
/// saved param groups (their hyperparameters).
pub(crate) struct Parsed<'a> {
    /// For each of our parameters (param-group order), its saved per-parameter state.
    pub per_param: Vec<Option<&'a Dict>>,
    /// The saved param groups, one per our group.
    pub groups: Vec<&'a Dict>,
    /// Our param indices in the saved `state` dict's order.
    pub order: Vec<usize>,
}

/// Checks a `{"state": {...}, "param_groups": [...]}` value against our group sizes.
pub(crate) fn parse_state_dict<'a>(
    sd: &'a Value,
    group_sizes: &[usize],
) -> Result<Parsed<'a>, OptimError> {
    let err = |m: String| OptimError::State(m);
    let state = sd
        .get("state")
        .ok_or_else(|| {
            err("missing key \"state\" (expected torch.optim's state_dict layout)".into())
        })?
        .as_dict()
        .ok_or_else(|| err("\"state\" must be a dict keyed by parameter index".into()))?;
    let groups = sd
        .get("param_groups")
        .ok_or_else(|| err("missing key \"param_groups\"".into()))?
        .as_seq()
        .ok_or_else(|| err("\"param_groups\" must be a list of dicts".into()))?;
    if groups.len() != group_sizes.len() {
        return Err(err(format!(
            "loaded state has {} param groups, this optimizer has {}",
            groups.len(),
            group_sizes.len()
        )));
    }
    let total: usize = group_sizes.iter().sum();
    let mut per_param = vec![None; total];
    let mut pos_of_id = std::collections::HashMap::new();
    let mut out_groups = Vec::with_capacity(groups.len());
    let mut offset = 0;
    for (gi, (g, &n)) in groups.iter().zip(group_sizes).enumerate() {
        let gd = g.as_dict().ok_or_else(|| {
            err(format!(
                "param_groups[{gi}] must be a dict, got {}",
                g.type_name()
            ))
        })?;
        let ids = g
            .get("params")
            .and_then(Value::as_seq)
            .ok_or_else(|| err(format!("param_groups[{gi}] has no \"params\" list")))?;
        if ids.len() != n {
            return Err(err(format!(
                "param_groups[{gi}] has {} params in the loaded state, {n} in this optimizer",
                ids.len()
            )));
        }
        for (j, id) in ids.iter().enumerate() {
            let id = id.as_i64().ok_or_else(|| {
                err(format!(
                    "param_groups[{gi}][\"params\"][{j}] must be an int"
                ))
            })?;
            pos_of_id.insert(id, offset + j);
            if let Some(s) = state.get(&Key::Int(id)) {
                let s = s.as_dict().ok_or_else(|| {
                    err(format!("state[{id}] must be a dict, got {}", s.type_name()))
                })?;
                per_param[offset + j] = Some(s);
            }
        }
        offset += n;
        out_groups.push(gd);
    }
    let mut order = Vec::new();
    for k in state.keys() {
        match k {
            Key::Int(id) => match pos_of_id.get(id) {
                Some(&pos) => order.push(pos),
                None => {
                    return Err(err(format!(
                        "state has an entry for param {id}, which no param group lists"
                    )))
                }
            },
            Key::Str(s) => {
                return Err(err(format!(
                    "state keys must be int param indices, got {s:?}"
                )))
            }
        }
    }
    Ok(Parsed {
        per_param,
        groups: out_groups,
        order,
    })
}

/// A float hyperparameter of a saved group.
pub(crate) fn hp_f64(g: &Dict, key: &str, gi: usize) -> Result<f64, OptimError> {
    match g.get(&Key::Str(key.into())) {
        Some(v) => v.as_f64().ok_or_else(|| {
            OptimError::State(format!(
                "param_groups[{gi}][\"{key}\"] must be a number, got {}",
                v.type_name()
            ))
        }),
        None => Err(OptimError::State(format!(
            "param_groups[{gi}] is missing \"{key}\""
        ))),
    }
}

/// A bool hyperparameter of a saved group (missing: `default`, as torch's `setdefault`).
pub(crate) fn hp_bool(g: &Dict, key: &str, gi: usize, default: bool) -> Result<bool, OptimError> {
    match g.get(&Key::Str(key.into())) {
        None | Some(Value::None) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Int(i)) => Ok(*i != 0),
        Some(v) => Err(OptimError::State(format!(
            "param_groups[{gi}][\"{key}\"] must be a bool, got {}",
            v.type_name()
        ))),
    }
}

/// The keys of a saved group that this optimizer does not interpret (kept so that a round trip
/// through us preserves e.g. a scheduler's `initial_lr`).
pub(crate) fn extra_keys(g: &Dict, known: &[&str]) -> Dict {
    g.iter()
        .filter(|(k, _)| !matches!(k, Key::Str(s) if known.contains(&s.as_str()) || s == "params"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Copies a saved state tensor into a fresh tensor shaped, typed and placed like `like`.
pub(crate) fn state_tensor(
    s: &Dict,
    key: &str,
    idx: usize,
    like: &Tensor,
) -> Result<Tensor, OptimError> {
    let v = s
        .get(&Key::Str(key.into()))
        .ok_or_else(|| OptimError::State(format!("state[{idx}] is missing \"{key}\"")))?;
    let t = v.as_tensor().ok_or_else(|| {
        OptimError::State(format!(
            "state[{idx}][\"{key}\"] must be a tensor, got {}",
            v.type_name()
        ))
    })?;
    if t.size() != like.size() {
        return Err(OptimError::State(format!(
            "state[{idx}][\"{key}\"] has shape {:?}, the parameter has {:?}",
            t.size(),
            like.size()
        )));
    }
    let mut out = like.zeros_like();
    out.f_copy_(t)
        .map_err(|e| OptimError::Backend(e.to_string()))?;
    Ok(out)
}

/// The `step` count of a saved state (a 0-dim tensor in torch, or a number).
pub(crate) fn state_step(s: &Dict, idx: usize) -> Result<f64, OptimError> {
    match s.get(&Key::Str("step".into())) {
        Some(Value::Tensor(t)) if t.numel() == 1 => t
            .f_double_value(&[])
            .or_else(|_| t.f_view([1]).and_then(|t| t.f_double_value(&[0])))
            .map_err(|e| OptimError::State(format!("state[{idx}][\"step\"]: {e}"))),
        Some(v) => v.as_f64().ok_or_else(|| {
            OptimError::State(format!(
                "state[{idx}][\"step\"] must be a number or 0-dim tensor"
            ))
        }),
        None => Err(OptimError::State(format!(
            "state[{idx}] is missing \"step\""
        ))),
    }
}

/// torch's `step` value: a float32 0-dim CPU tensor.
pub(crate) fn step_tensor(step: f64) -> Tensor {
    Tensor::from(step as f32)
}

/// A finished `param_groups` entry: our keys in torch's order, then extra keys, then `params`.
pub(crate) fn group_value(keys: Vec<(&str, Value)>, extra: &Dict, first: usize, n: usize) -> Value {
    let mut d = Dict::new();
    for (k, v) in keys {
        d.insert(Key::Str(k.into()), v);
    }
    for (k, v) in extra {
        d.insert(k.clone(), v.clone());
    }
    d.insert(
        Key::Str("params".into()),
        Value::List((first..first + n).map(|i| Value::Int(i as i64)).collect()),
    );
    Value::Dict(d)
}

/// Checks a hyperparameter is finite and >= 0, as torch's constructors do.
pub(crate) fn check_nonneg(name: &str, v: f64) -> Result<(), OptimError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(OptimError::Config(format!(
            "Invalid {name} value: {v} (expected a finite value >= 0)"
        )))
    }
}

/// A map from tch errors to [`OptimError::Backend`].
pub(crate) fn backend(e: tch::TchError) -> OptimError {
    OptimError::Backend(e.to_string())
}

/// One param group: its parameters and hyperparameters.
#[derive(Debug)]
pub(crate) struct Group<C> {
    pub params: Vec<Tensor>,
    pub cfg: C,
    pub extra: Dict,
}

/// A param group's config: validated on construction, with a learning rate (what
/// schedulers change).
pub(crate) trait LrConfig {
    /// Checks the hyperparameters (torch's constructor errors).
    fn validate(&self) -> Result<(), OptimError>;
    /// The learning rate, mutably.
    fn lr_mut(&mut self) -> &mut f64;
}

/// The `Optimizer` methods every grouped optimizer shares.
impl<C: LrConfig> Group<C> {
    /// Validates each `(params, config)` pair and builds the groups; also returns the total
    /// number of parameters (the length of the per-parameter state).
    pub fn build(groups: Vec<(Vec<Tensor>, C)>) -> Result<(Vec<Group<C>>, usize), OptimError> {
        let mut out = Vec::with_capacity(groups.len());
        for (params, cfg) in groups {
            cfg.validate()?;
            out.push(Group {
                params,
                cfg,
                extra: Dict::new(),
            });
        }
        let n = out.iter().map(|g| g.params.len()).sum();
        Ok((out, n))
    }

    /// Sets the gradients of every parameter in `groups` to `None`, as torch's default
    /// `zero_grad(set_to_none=True)` does: no pass over memory, and the next backward stores
    /// its gradient instead of adding it to zeros. Zeroes instead where that fails (it cannot
    /// for a plain tensor; the fallback keeps `zero_grad`'s contract in any case).
    pub fn zero_grads(groups: &mut [Group<C>]) {
        for p in groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
            if lightning_sys::ops::set_grad_to_none(p).is_err() {
                p.zero_grad();
            }
        }
    }

    /// Every parameter, in group order (shallow clones).
    pub fn all_params(groups: &[Group<C>]) -> Vec<Tensor> {
        groups
            .iter()
            .flat_map(|g| g.params.iter().map(Tensor::shallow_clone))
            .collect()
    }

    /// Sets one group's learning rate (no-op for an unknown group).
    pub fn set_lr(groups: &mut [Group<C>], group: usize, lr: f64) {
        if let Some(g) = groups.get_mut(group) {
            *g.cfg.lr_mut() = lr;
        }
    }
}
