//! In one process: the store, argument checks, a group of one, and NCCL (its error without a
//! GPU; world size 1 on a GPU).

use std::time::Duration;

use lightning_dist::{
    nccl_build_status, nccl_compiled, DistError, ProcessGroup, ReduceOp, Reducer, ReducerOptions,
    Store,
};
use tch::{Device, Kind, Tensor};

const T: Duration = Duration::from_secs(20);

#[test]
fn store_set_get_add_wait_check() {
    let server = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let port = server.port().unwrap();
    assert_ne!(port, 0);
    let client = Store::client("127.0.0.1", port, T).unwrap();
    server.set("a", b"\x00bytes\xff").unwrap();
    assert_eq!(client.get("a").unwrap(), b"\x00bytes\xff");
    client.set("empty", b"").unwrap();
    assert_eq!(server.get("empty").unwrap(), b"");
    assert_eq!(client.add("n", 2).unwrap(), 2);
    assert_eq!(server.add("n", 3).unwrap(), 5);
    assert!(client.check(&["a", "n"]).unwrap());
    assert!(!client.check(&["missing"]).unwrap());
    client.wait(&["a"]).unwrap();
    assert!(client.delete_key("a").unwrap());
    assert!(!client.check(&["a"]).unwrap());
    assert!(server.num_keys().unwrap() >= 2);
    server.wait_for_workers().unwrap();
}

#[test]
fn store_wait_and_get_time_out_with_an_error() {
    let server = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let started = std::time::Instant::now();
    let err = server
        .wait_timeout(&["never"], Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.op(), "TCPStore::wait");
    server.set_timeout(Duration::from_millis(200)).unwrap();
    let err = server.get("never").unwrap_err();
    assert!(
        matches!(
            err,
            DistError::C10d {
                op: "TCPStore::get",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn client_without_server_fails_within_its_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let err = Store::client("127.0.0.1", port, Duration::from_millis(1500)).unwrap_err();
    assert_eq!(err.op(), "TCPStore::new");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn group_of_one_and_argument_errors() {
    let store = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let err = ProcessGroup::gloo(&store, 1, 1, T).unwrap_err();
    assert!(matches!(err, DistError::InvalidArgument { .. }), "{err}");
    let pg = ProcessGroup::gloo(&store, 0, 1, T).unwrap();
    assert_eq!((pg.rank(), pg.size()), (0, 1));
    let mut ts = [Tensor::from_slice(&[1.5f32, -2.0])];
    for op in [
        ReduceOp::Sum,
        ReduceOp::Avg,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Product,
    ] {
        pg.all_reduce(&mut ts, op).unwrap();
        assert_eq!(Vec::<f32>::try_from(&ts[0]).unwrap(), [1.5, -2.0], "{op:?}");
    }
    assert!(pg.broadcast(&mut ts, 1).is_err());
    // Gloo needs contiguous tensors: c10d's message comes back, the op is named.
    let mut strided = [Tensor::ones([4, 4], (Kind::Float, Device::Cpu)).tr()];
    match pg.all_reduce(&mut strided, ReduceOp::Sum) {
        Ok(()) => {} // accepted by this libtorch: fine too
        Err(e) => assert_eq!(e.op(), "all_reduce", "{e}"),
    }
    let err = Reducer::new(&pg, &[], &ReducerOptions::default()).unwrap_err();
    assert!(err.to_string().contains("at least one parameter"), "{err}");
    let no_grad = [Tensor::ones([2], (Kind::Float, Device::Cpu))];
    assert!(Reducer::new(&pg, &no_grad, &ReducerOptions::default()).is_err());
    pg.barrier().unwrap();
}

#[test]
fn nccl_without_a_gpu_is_an_error() {
    if tch::Cuda::is_available() {
        eprintln!("skipped nccl_without_a_gpu_is_an_error: a GPU is present (see nccl_world_size_one_on_gpu)");
        return;
    }
    assert!(
        nccl_compiled(),
        "NCCL support is {}; scripts/setup.sh installs the CUDA headers it needs",
        nccl_build_status()
    );
    let store = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let err = ProcessGroup::nccl(&store, 0, 1, T).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("ProcessGroup::nccl failed: "),
        "{message}"
    );
    assert!(message.contains("GPU"), "{message}");
    eprintln!("nccl without GPU: {message}");
}

#[test]
fn nccl_world_size_one_on_gpu() {
    if !tch::Cuda::is_available() {
        assert!(
            std::env::var("LIGHTNING_RS_EXPECT_GPU").as_deref() != Ok("1"),
            "LIGHTNING_RS_EXPECT_GPU=1 but tch::Cuda::is_available() is false"
        );
        eprintln!(
            "skipped nccl_world_size_one_on_gpu: no GPU (tch::Cuda::is_available() is false)"
        );
        return;
    }
    let dev = Device::Cuda(0);
    let store = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let pg = ProcessGroup::nccl(&store, 0, 1, T).unwrap();
    let mut ts = [Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(dev)];
    pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap();
    pg.all_reduce(&mut ts, ReduceOp::Avg).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&ts[0].to_device(Device::Cpu)).unwrap(),
        [1.0, 2.0, 3.0]
    );
    pg.broadcast(&mut ts, 0).unwrap();
    let g = pg.all_gather(&ts[0]).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].device(), dev);
    pg.barrier().unwrap();

    // DDP on the GPU: the reduced gradient of a group of one is the local gradient.
    let w = Tensor::from_slice(&[0.5f32, -1.0])
        .to_device(dev)
        .set_requires_grad(true);
    pg.broadcast_coalesced(std::slice::from_ref(&w), 0).unwrap();
    let mut reducer =
        Reducer::new(&pg, std::slice::from_ref(&w), &ReducerOptions::default()).unwrap();
    let x = Tensor::from_slice(&[2.0f32, 3.0]).to_device(dev);
    reducer.prepare_for_forward().unwrap();
    let loss = (&w * &x).sum(Kind::Float);
    reducer.prepare_for_backward(&[&loss]).unwrap();
    loss.backward();
    assert_eq!(
        Vec::<f32>::try_from(&w.grad().to_device(Device::Cpu)).unwrap(),
        [2.0, 3.0]
    );
}

/// A parameter the forward never uses, without `find_unused_parameters`: DDP's reduction
/// cannot finish, and c10d says so at the next step, as an error (not an abort or a hang).
#[test]
fn unused_parameter_without_find_unused_is_reported() {
    let store = Store::server("127.0.0.1", 0, 1, T).unwrap();
    let pg = ProcessGroup::gloo(&store, 0, 1, T).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    let params = [
        Tensor::ones([3], opts).set_requires_grad(true),
        Tensor::ones([2], opts).set_requires_grad(true),
    ];
    let mut reducer = Reducer::new(&pg, &params, &ReducerOptions::default()).unwrap();
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let step = |r: &mut Reducer| -> lightning_dist::Result<()> {
        r.prepare_for_forward()?;
        let loss = (&params[0] * &x).sum(Kind::Float);
        r.prepare_for_backward(&[&loss])?;
        loss.backward();
        Ok(())
    };
    step(&mut reducer).unwrap();
    let err = step(&mut reducer).unwrap_err();
    assert!(err.to_string().contains("find_unused_parameters"), "{err}");
    assert!(err.op().starts_with("Reducer::prepare_for_"), "{err}");
    let head: String = err.to_string().chars().take(160).collect();
    eprintln!("unused parameter: {head}...");
    drop(reducer);
    pg.barrier().unwrap();
}
