//! Which file a save writes and which older file it replaces: Lightning's top-k policy
//! (`check_monitor_top_k`, `_update_best_and_save`, `_save_none_monitor_checkpoint`,
//! `_save_last_checkpoint`), with bookkeeping that rolls back when a save fails.

use super::files::lexical_absolute;
use super::{Metrics, Mode, ModelCheckpoint, SaveLast};
use crate::callbacks::{AfterSave, CallbackError, TrainerContext};
use crate::pyfmt;
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// What `ModelCheckpoint` tracks about its files (its saved state, less config).
#[derive(Clone, Debug)]
pub(super) struct Book {
    pub(super) current_score: Option<f64>,
    pub(super) best_k_models: IndexMap<PathBuf, f64>,
    pub(super) kth_best_model_path: Option<PathBuf>,
    pub(super) kth_value: f64,
    pub(super) best_model_score: Option<f64>,
    pub(super) best_model_path: Option<PathBuf>,
    pub(super) last_model_path: Option<PathBuf>,
}

impl Book {
    pub(super) fn new(mode: Mode) -> Book {
        Book {
            current_score: None,
            best_k_models: IndexMap::new(),
            kth_best_model_path: None,
            kth_value: mode.worst(),
            best_model_score: None,
            best_model_path: None,
            last_model_path: None,
        }
    }
}

impl ModelCheckpoint {
    /// Runs `f` (which updates the bookkeeping, then saves); restores it when `f` fails.
    fn transact(&mut self, f: impl FnOnce(&mut Self) -> crate::Result<()>) -> crate::Result<()> {
        let before = self.book.clone();
        let r = f(self);
        if r.is_err() {
            self.book = before;
        }
        r
    }

    pub(super) fn save_topk(
        &mut self,
        t: &mut TrainerContext<'_>,
        cands: &Metrics,
    ) -> crate::Result<()> {
        if self.save_top_k == 0 {
            return Ok(());
        }
        match self.monitor.clone() {
            Some(monitor) => {
                if !cands.contains_key(&monitor) {
                    let err = CallbackError::MonitorNotFound {
                        monitor: monitor.clone(),
                        keys: cands.keys().cloned().collect(),
                    };
                    if t.run.validation_ran {
                        return Err(err.into());
                    }
                    self.warn_once(err.to_string());
                }
                let current = cands.get(&monitor).map(|v| v.as_f64());
                match current {
                    Some(c) if self.check_monitor_top_k(c) => {
                        self.update_best_and_save(c, t, cands)
                    }
                    _ => {
                        if self.verbose {
                            tracing::info!(
                                "Epoch {}, global step {}: {} was not in top {}",
                                t.run.current_epoch,
                                t.run.global_step,
                                pyfmt::repr_str(&monitor),
                                self.save_top_k
                            );
                        }
                        Ok(())
                    }
                }
            }
            None => self.save_none_monitor(t, cands),
        }
    }

    /// Lightning's `check_monitor_top_k` (`torch.lt`/`gt` against the kth value).
    fn check_monitor_top_k(&self, current: f64) -> bool {
        if self.save_top_k == -1 {
            return true;
        }
        if (self.book.best_k_models.len() as i64) < self.save_top_k {
            return true;
        }
        let kth = self
            .book
            .kth_best_model_path
            .as_ref()
            .and_then(|p| self.book.best_k_models.get(p).copied())
            .or_else(|| self.extreme(false).map(|(_, v)| v))
            .unwrap_or(self.mode.worst());
        self.mode.better(current, kth)
    }

    /// The best (`best = true`) or worst kept model, first in save order on ties (Python's
    /// `min`/`max` over the dict).
    fn extreme(&self, best: bool) -> Option<(PathBuf, f64)> {
        let mut it = self.book.best_k_models.iter();
        let (mut p, mut v) = it.next().map(|(p, v)| (p, *v))?;
        for (q, w) in it {
            let replace = if best {
                self.mode.better(*w, v)
            } else {
                self.mode.better(v, *w)
            };
            if replace {
                p = q;
                v = *w;
            }
        }
        Some((p.clone(), v))
    }

    /// A name from the template, versioned past existing files (except `del`, about to go).
    fn interpolated_path(
        &self,
        cands: &Metrics,
        t: &TrainerContext<'_>,
        del: Option<&Path>,
    ) -> Result<PathBuf, CallbackError> {
        let mut path = self.format_checkpoint_name(cands, None, None, self.prefix.as_deref())?;
        if self.enable_version_counter {
            let mut ver = Self::STARTING_VERSION;
            while Self::file_exists(t, &path) && Some(path.as_path()) != del {
                path =
                    self.format_checkpoint_name(cands, None, Some(ver), self.prefix.as_deref())?;
                ver += 1;
            }
        }
        Ok(path)
    }

    fn update_best_and_save(
        &mut self,
        current: f64,
        t: &mut TrainerContext<'_>,
        cands: &Metrics,
    ) -> crate::Result<()> {
        let mut del: Option<PathBuf> = None;
        let mode = self.mode;
        let top_k = self.save_top_k;
        self.transact(|me| {
            let k = if top_k == -1 {
                me.book.best_k_models.len() + 1
            } else {
                top_k as usize
            };
            if me.book.best_k_models.len() == k && k > 0 {
                del = me.book.kth_best_model_path.clone();
                if let Some(d) = &del {
                    me.book.best_k_models.shift_remove(d);
                }
            }
            // never let NaN become best: it ranks as the worst value
            let current = if current.is_nan() {
                mode.worst()
            } else {
                current
            };
            let path = me.interpolated_path(cands, t, del.as_deref())?;
            me.book.current_score = Some(current);
            me.book.best_k_models.insert(path.clone(), current);
            if me.book.best_k_models.len() == k
                && let Some((p, v)) = me.extreme(false)
            {
                me.book.kth_best_model_path = Some(p);
                me.book.kth_value = v;
            }
            if let Some((p, v)) = me.extreme(true) {
                me.book.best_model_path = Some(p);
                me.book.best_model_score = Some(v);
            }
            if me.verbose {
                tracing::info!(
                    "Epoch {}, global step {}: {} reached {current:0.5} (best {:0.5}), saving \
                     model to {} as top {k}",
                    t.run.current_epoch,
                    t.run.global_step,
                    pyfmt::repr_str(me.monitor.as_deref().unwrap_or("")),
                    me.book.best_model_score.unwrap_or(current),
                    pyfmt::repr_str(&path.to_string_lossy()),
                );
            }
            me.save_file(t, &path)?;
            if let Some(d) = del.take()
                && me.should_remove(t, &d, &path)
            {
                me.replaced.push(d);
            }
            Ok(())
        })
    }

    fn save_none_monitor(
        &mut self,
        t: &mut TrainerContext<'_>,
        cands: &Metrics,
    ) -> crate::Result<()> {
        let top_k = self.save_top_k;
        self.transact(|me| {
            let path = me.interpolated_path(cands, t, me.book.best_model_path.as_deref())?;
            let previous = me.book.best_model_path.replace(path.clone());
            me.save_file(t, &path)?;
            if let Some(prev) = previous
                && top_k == 1
                && me.should_remove(t, &prev, &path)
            {
                me.replaced.push(prev);
            }
            Ok(())
        })
    }

    pub(super) fn save_last_checkpoint(
        &mut self,
        t: &mut TrainerContext<'_>,
        cands: &Metrics,
    ) -> crate::Result<()> {
        if !self.save_last.enabled() {
            return Ok(());
        }
        let last_name = self.last_name.clone();
        self.transact(|me| {
            let mut path =
                me.format_checkpoint_name(cands, Some(&last_name), None, me.prefix.as_deref())?;
            if me.enable_version_counter {
                let mut ver = Self::STARTING_VERSION;
                while Self::file_exists(t, &path)
                    && Some(path.as_path()) != me.book.last_model_path.as_deref()
                {
                    path = me.format_checkpoint_name(
                        cands,
                        Some(&last_name),
                        Some(ver),
                        me.prefix.as_deref(),
                    )?;
                    ver += 1;
                }
            }
            let previous = me.book.last_model_path.replace(path.clone());
            match me.last_checkpoint_saved.clone() {
                Some(target) if me.save_last == SaveLast::Link && me.save_top_k != 0 => {
                    // `last` points at the target once the target is complete on disk
                    if t.run.is_global_zero {
                        t.when_durable(AfterSave::Link {
                            target,
                            link: path.clone(),
                        })?;
                    }
                }
                _ => me.save_file(t, &path)?,
            }
            if let Some(prev) = previous
                && me.should_remove(t, &prev, &path)
            {
                me.replaced.push(prev);
            }
            Ok(())
        })
    }

    /// Lightning's `_should_remove_checkpoint`, stricter: never the resumed-from file (also
    /// through links), never anything outside `dirpath` (after resolving `..`).
    pub(super) fn should_remove(
        &self,
        t: &TrainerContext<'_>,
        previous: &Path,
        current: &Path,
    ) -> bool {
        if previous == current {
            return false;
        }
        let prev = lexical_absolute(previous);
        if let Some(resume) = t.run.resumed_from {
            if lexical_absolute(resume) == prev {
                return false;
            }
            if let (Ok(a), Ok(b)) = (previous.canonicalize(), resume.canonicalize())
                && a == b
            {
                return false;
            }
        }
        let Some(dir) = &self.dirpath else {
            return false;
        };
        let dir = lexical_absolute(dir);
        prev.parent().is_some_and(|p| p.starts_with(&dir))
    }
}
