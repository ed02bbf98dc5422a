//! Manual optimization under DDP (a GAN: two optimizers, each `manual_backward` with the
//! other network's parameters toggled off, `ddp_find_unused_parameters_true` as Lightning's
//! GAN needs): the reducer is re-armed before every manual backward, so both ranks, each on
//! its own shard of the data, end with the same weights bit for bit.

use lightning_core::{checkpoint, Value};
use lightning_testkit::roles::ddp;

#[test]
fn a_gan_trains_on_two_ranks_with_manual_optimization() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = crate::job("gan-ddp");
    cmd.arg(dir.path());
    crate::run_ok(&mut cmd, "gan on 2 ranks");
    let files = ddp::weights_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let weights = |p: &std::path::Path| match checkpoint::load(p).unwrap() {
        Value::OrderedDict(d) => d,
        other => panic!("{other:?}"),
    };
    let (a, b) = (weights(&files[0]), weights(&files[1]));
    assert_eq!(a.len(), 8, "generator and discriminator, two layers each");
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        let (x, y) = (x.as_tensor().unwrap(), y.as_tensor().unwrap());
        assert!(x.equal(y), "{k} differs between the ranks");
    }
    // 1797 images / 2 ranks / 64 per batch -> 15 batches of two optimizer steps
    let steps = std::fs::read_to_string(files[0].with_extension("steps")).unwrap();
    assert_eq!(steps, "30");
    // only rank 0 wrote checkpoints
    assert!(dir.path().join("checkpoints/last.ckpt").exists());
}
