//! Comparing our checkpoints' `loops` with Lightning's, file by file, in Python (for
//! `loops_parity` and `manual_optim`).
#![allow(dead_code)]

use lightning_core::callbacks::{ModelCheckpoint, SaveLast};
use lightning_core::trainer::{Trainer, TrainerBuilder};
use std::path::Path;

/// A quiet trainer (no logger, no progress bar, seed 5) checkpointing into `dir` as the
/// comparisons' Lightning runs do: every epoch (or every `every` steps), `save_top_k=-1`,
/// `save_last=True`.
pub fn checkpointing_trainer(dir: &Path, every: i64) -> TrainerBuilder {
    let mut ckpt = ModelCheckpoint::builder()
        .dirpath(dir)
        .save_top_k(-1)
        .save_last(SaveLast::True);
    if every > 0 {
        ckpt = ckpt.every_n_train_steps(every);
    }
    Trainer::builder()
        .enable_progress_bar(false)
        .logger(false)
        .seed(5)
        .default_root_dir(dir)
        .callback(ckpt.build().unwrap())
}

/// Python: `flat(d)` (nested dicts as `a/b/c` keys) and `compare_loops(theirs, ours)`, which
/// prints (as one JSON line) the file names of both directories and every difference in
/// `loops`, `epoch` and `global_step` between the files of the same name. Needs `torch`.
/// Our mid-epoch files carry the training loader's state in
/// `loops.fit_loop.state_dict.combined_loader`, as Lightning's do with a stateful loader
/// (torchdata's `StatefulDataLoader`) but not with the plain `DataLoader` the Lightning runs
/// use: it is left out of the comparison and counted (`loader_states`).
pub const PY_COMPARE_LOOPS: &str = r#"
import json, os
def flat(d, p=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, p + k + "/"))
        else:
            out[p + k] = v
    return out
def compare_loops(theirs, ours):
    names_t, names_o = sorted(os.listdir(theirs)), sorted(os.listdir(ours))
    diffs, compared, loader_states = [], 0, 0
    for n in sorted(set(names_t) & set(names_o)):
        a = torch.load(os.path.join(ours, n), weights_only=True)
        if a["loops"]["fit_loop"]["state_dict"].pop("combined_loader", None) is not None:
            loader_states += 1
        b = torch.load(os.path.join(theirs, n), weights_only=True)
        fa = flat({"loops": a["loops"], "epoch": a["epoch"], "global_step": a["global_step"]})
        fb = flat({"loops": b["loops"], "epoch": b["epoch"], "global_step": b["global_step"]})
        for k in sorted(set(fa) | set(fb)):
            compared += 1
            if fa.get(k, "<missing>") != fb.get(k, "<missing>"):
                diffs.append(f"{n}: {k}: ours {fa.get(k, '<missing>')!r}, Lightning {fb.get(k, '<missing>')!r}")
    print(json.dumps({"theirs": names_t, "ours": names_o, "diffs": diffs, "compared": compared,
                      "loader_states": loader_states}))
"#;

/// Checks the JSON `compare_loops` printed (the last line of `out`): the same files, more
/// than 70 values compared, and no difference (listed when there are some). Returns how many
/// of our files carried a loader state.
pub fn assert_same_loops(out: &str) -> u64 {
    let got: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(got["ours"], got["theirs"], "the same files");
    assert!(got["compared"].as_u64().unwrap_or(0) > 70, "{got}");
    eprintln!(
        "compared {} values in {} files",
        got["compared"], got["ours"]
    );
    assert_no_diffs(&got);
    got["loader_states"].as_u64().unwrap_or(0)
}

/// Fails listing `got["diffs"]` when there are any.
pub fn assert_no_diffs(got: &serde_json::Value) {
    let diffs = got["diffs"].as_array().cloned().unwrap_or_default();
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .filter_map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
