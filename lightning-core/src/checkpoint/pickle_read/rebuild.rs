//! Rebuilding torch objects from the VM's nodes (`BUILD`, `REDUCE` of allowlisted globals,
//! persistent storage ids, tensor views), and converting the result to a [`Value`].

use super::*;

impl Vm<'_, '_> {
    pub(super) fn build(&mut self, obj: Id, state: Id) -> Result<(), CheckpointError> {
        let empty = match &self.arena[state] {
            Node::None => true,
            Node::Dict(v) | Node::OrderedDict(v) => v.is_empty(),
            Node::Tuple(v) => v.iter().all(|&i| match &self.arena[i] {
                Node::None => true,
                Node::Dict(d) => d.is_empty(),
                _ => false,
            }),
            _ => false,
        };
        // `state_dict()` OrderedDicts carry a `_metadata` attribute (module versions), set by
        // BUILD with a dict; the value tree has no attributes, so it is dropped.
        let attrs = matches!(self.arena[obj], Node::OrderedDict(_))
            && matches!(self.arena[state], Node::Dict(_));
        if empty || attrs {
            return Ok(());
        }
        let t = self.arena[obj].type_name();
        Err(self.err(format!("BUILD with state on a {t} is not supported")))
    }

    pub(super) fn call(&mut self, f: Id, args: Id) -> Result<Node, CheckpointError> {
        let g = match &self.arena[f] {
            Node::Global(g) => *g,
            n => return Err(self.err(format!("REDUCE on a {}, not a callable", n.type_name()))),
        };
        let a = self.tuple_items(args, "call arguments")?;
        if let Some(&first) = a.first() {
            self.charge(self.len_of(first))?; // OrderedDict(items) / set(items) copy them
        }
        let arg = |i: usize| {
            a.get(i)
                .copied()
                .ok_or_else(|| self.err(format!("{g:?} called with {} arguments", a.len())))
        };
        match g {
            Glob::OrderedDict => {
                let mut pairs = vec![];
                if let Some(&items) = a.first() {
                    match &self.arena[items] {
                        Node::List(v) | Node::Tuple(v) => {
                            for &p in v {
                                let kv = self.tuple_items(p, "OrderedDict item")?;
                                if kv.len() != 2 {
                                    return Err(self.err("OrderedDict item is not a pair"));
                                }
                                pairs.push((kv[0], kv[1]));
                            }
                        }
                        Node::Dict(v) | Node::OrderedDict(v) => pairs.extend(v.iter().copied()),
                        n => {
                            return Err(self
                                .err(format!("OrderedDict({}) is not supported", n.type_name())))
                        }
                    }
                }
                Ok(Node::OrderedDict(pairs))
            }
            Glob::Set => {
                let items = match a.first().map(|&i| &self.arena[i]) {
                    None => vec![],
                    Some(Node::List(v) | Node::Tuple(v) | Node::Set(v)) => v.clone(),
                    Some(n) => {
                        return Err(self.err(format!("set({}) is not supported", n.type_name())))
                    }
                };
                Ok(Node::Set(items))
            }
            Glob::Device => {
                let mut s = match &self.arena[arg(0)?] {
                    Node::Str(s) => s.clone(),
                    _ => return Err(self.err("torch.device needs a string")),
                };
                if let Some(&i) = a.get(1) {
                    if let Node::Int(n) = self.arena[i] {
                        s = format!("{s}:{n}");
                    }
                }
                Ok(Node::Str(s))
            }
            Glob::RebuildTensorV2 | Glob::RebuildTensor => {
                let storage = arg(0)?;
                let offset = self.int_of(arg(1)?, "tensor offset")?;
                let size = self.ints_of(arg(2)?, "tensor size")?;
                let stride = self.ints_of(arg(3)?, "tensor stride")?;
                self.view(storage, offset, &size, &stride).map(Node::Tensor)
            }
            Glob::RebuildParameter | Glob::RebuildParameterWithState => {
                match &self.arena[arg(0)?] {
                    Node::Tensor(t) => Ok(Node::Tensor(t.shallow_clone())),
                    n => Err(self.err(format!("Parameter of a {}", n.type_name()))),
                }
            }
            Glob::RebuildFromTypeV2 => {
                let func = arg(0)?;
                if !matches!(self.arena[arg(1)?], Node::Global(Glob::TensorType)) {
                    return Err(self.err("_rebuild_from_type_v2 of a type other than Tensor"));
                }
                let inner = arg(2)?;
                self.build(func, arg(3)?)?;
                self.call(func, inner)
            }
            Glob::StorageType(_) | Glob::TensorType | Glob::Dtype(_) => {
                Err(self.err(format!("{g:?} cannot be called here")))
            }
        }
    }

    pub(super) fn persistent(&mut self, pid: Id) -> Result<Node, CheckpointError> {
        let items = self.tuple_items(pid, "persistent id")?;
        let s = |vm: &Self, i: usize| match items.get(i).map(|&x| &vm.arena[x]) {
            Some(Node::Str(s)) => Ok(s.clone()),
            _ => Err(vm.err(format!("persistent id item {i} is not a string"))),
        };
        if items.len() != 5 || s(self, 0)? != "storage" {
            return Err(self.err("persistent id is not ('storage', type, key, location, numel)"));
        }
        let kind = match self.arena[items[1]] {
            Node::Global(Glob::StorageType(k)) => k,
            _ => return Err(self.err("persistent id names no known storage type")),
        };
        let key = s(self, 2)?;
        if key.is_empty() || key.contains('/') || key.contains("..") {
            return Err(self.err(format!("storage key {key:?} is not a plain name")));
        }
        let numel = self.int_of(items[4], "storage size")?;
        if numel < 0 {
            return Err(self.err(format!("storage {key} has negative size {numel}")));
        }
        if let Some((k, t)) = self.storages.get(&key) {
            if *k != kind || t.numel() as i64 != numel {
                return Err(self.err(format!("storage {key} used with two types or sizes")));
            }
            return Ok(Node::Storage(kind, t.shallow_clone()));
        }
        let t = (self.load)(&key, kind, numel)?;
        self.storages.insert(key, (kind, t.shallow_clone()));
        Ok(Node::Storage(kind, t))
    }

    fn view(
        &self,
        storage: Id,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor, CheckpointError> {
        let (kind, st) = match &self.arena[storage] {
            Node::Storage(k, t) => (*k, t),
            n => return Err(self.err(format!("tensor over a {}, not a storage", n.type_name()))),
        };
        if size.len() != stride.len() || size.len() > MAX_DIMS {
            return Err(self.err(format!(
                "tensor with {} sizes and {} strides",
                size.len(),
                stride.len()
            )));
        }
        if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
            return Err(self.err("negative tensor offset, size or stride"));
        }
        let mut numel: i64 = 1;
        let mut last: i64 = offset;
        for (&n, &s) in size.iter().zip(stride) {
            numel = numel
                .checked_mul(n)
                .ok_or_else(|| self.err("tensor size overflows"))?;
            if n > 0 {
                last = (n - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .ok_or_else(|| self.err("tensor extent overflows"))?;
            }
        }
        let storage_numel = st.numel() as i64;
        if numel == 0 {
            return Tensor::f_empty(size, (kind, st.device())).map_err(|e| self.err(e));
        }
        if last >= storage_numel {
            return Err(self.err(format!(
                "tensor view reaches element {last} of a storage of {storage_numel}"
            )));
        }
        st.f_as_strided(size, stride, offset)
            .map_err(|e| self.err(e))
    }

    fn key(&self, id: Id) -> Result<Key, CheckpointError> {
        match &self.arena[id] {
            Node::Str(s) => Ok(Key::Str(s.clone())),
            Node::Int(i) => Ok(Key::Int(*i)),
            n => Err(self.err(format!(
                "dict key of type {} is not supported",
                n.type_name()
            ))),
        }
    }

    pub(super) fn convert(
        &self,
        id: Id,
        depth: usize,
        budget: &mut usize,
    ) -> Result<Value, CheckpointError> {
        if depth > MAX_DEPTH {
            return Err(CheckpointError::Limit {
                path: self.path.clone(),
                what: format!("containers nested deeper than {MAX_DEPTH} levels"),
            });
        }
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| CheckpointError::Limit {
                path: self.path.clone(),
                what: "too many shared references (the value tree would explode)".into(),
            })?;
        let seq = |v: &[Id], budget: &mut usize| -> Result<Vec<Value>, CheckpointError> {
            v.iter()
                .map(|&i| self.convert(i, depth + 1, budget))
                .collect()
        };
        let dict = |v: &[(Id, Id)], budget: &mut usize| -> Result<Dict, CheckpointError> {
            let mut d = Dict::with_capacity(v.len());
            for &(k, x) in v {
                d.insert(self.key(k)?, self.convert(x, depth + 1, budget)?);
            }
            Ok(d)
        };
        Ok(match &self.arena[id] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::Float(x) => Value::Float(*x),
            Node::Str(s) => Value::Str(s.clone()),
            Node::List(v) | Node::Set(v) => Value::List(seq(v, budget)?),
            Node::Tuple(v) => Value::Tuple(seq(v, budget)?),
            Node::Dict(v) => Value::Dict(dict(v, budget)?),
            Node::OrderedDict(v) => Value::OrderedDict(dict(v, budget)?),
            Node::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Node::Global(Glob::Dtype(d)) => Value::Str(format!("torch.{d}")),
            Node::Bytes(n) => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!("a bytes value ({n} bytes) in the checkpoint tree"),
                })
            }
            n @ (Node::Global(_) | Node::Storage(..)) => {
                return Err(CheckpointError::Unsupported {
                    path: self.path.clone(),
                    what: format!("a {} value in the checkpoint tree", n.type_name()),
                })
            }
        })
    }
}
