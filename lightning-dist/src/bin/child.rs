//! The child process of lightning-dist's multi-process tests: one rank of a scenario.
//!
//! `lightning-dist-child SCENARIO` with the launcher's variables (`RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`, optionally `TORCHELASTIC_USE_AGENT_STORE=True`) and
//! `LDIST_TIMEOUT_MS` (the group's timeout). Prints results as `key value` lines; exits 0 when
//! every check passed, non-zero (with the reason on stderr) otherwise.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use lightning_dist::{ClusterEnv, ProcessGroup, ReduceOp, Reducer, ReducerOptions, Store};
use tch::{Device, Kind, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn f32s(t: &Tensor) -> Res<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        &t.to_kind(Kind::Float).flatten(0, -1),
    )?)
}

fn expect(what: &str, got: &Tensor, want: &[f32]) -> Res<()> {
    let got = f32s(got)?;
    if got != want {
        return Err(format!("{what}: got {got:?}, want {want:?}").into());
    }
    Ok(())
}

fn cpu() -> (Kind, Device) {
    (Kind::Float, Device::Cpu)
}

/// Every collective on two ranks, and the store between them.
fn collectives(env: &ClusterEnv, store: &Store, pg: &ProcessGroup) -> Res<()> {
    let (rank, world) = (env.rank as f32, env.world_size as f32);
    let sum_of_ranks_plus_1: f32 = (1..=env.world_size).map(|r| r as f32).sum();

    let mut ts = [
        Tensor::full([3], (rank + 1.0) as f64, cpu()),
        Tensor::full([2, 2], 10.0 * (rank + 1.0) as f64, cpu()),
    ];
    pg.all_reduce(&mut ts, ReduceOp::Sum)?;
    expect("all_reduce sum", &ts[0], &[sum_of_ranks_plus_1; 3])?;
    expect(
        "all_reduce sum (2nd tensor)",
        &ts[1],
        &[10.0 * sum_of_ranks_plus_1; 4],
    )?;

    let mut ts = [Tensor::from_slice(&[rank, -rank, 5.0])];
    pg.all_reduce(&mut ts, ReduceOp::Max)?;
    expect("all_reduce max", &ts[0], &[world - 1.0, 0.0, 5.0])?;

    let mut ts = [Tensor::from_slice(&[rank, -rank])];
    pg.all_reduce(&mut ts, ReduceOp::Min)?;
    expect("all_reduce min", &ts[0], &[0.0, -(world - 1.0)])?;

    let mut ts = [Tensor::from_slice(&[rank + 2.0])];
    pg.all_reduce(&mut ts, ReduceOp::Product)?;
    let product: f32 = (0..env.world_size).map(|r| r as f32 + 2.0).product();
    expect("all_reduce product", &ts[0], &[product])?;

    let mut ts = [Tensor::from_slice(&[rank + 1.0, 2.0 * (rank + 1.0)])];
    pg.all_reduce(&mut ts, ReduceOp::Avg)?;
    let mean = sum_of_ranks_plus_1 / world;
    expect("all_reduce avg", &ts[0], &[mean, 2.0 * mean])?;

    let mut ints = [Tensor::from_slice(&[1i64, 2])];
    pg.all_reduce(&mut ints, ReduceOp::Sum)?;
    if Vec::<i64>::try_from(&ints[0])? != [world as i64, 2 * world as i64] {
        return Err("all_reduce sum on int64".into());
    }
    // Avg on integers is refused on every rank before communicating: the group stays usable.
    match pg.all_reduce(&mut ints, ReduceOp::Avg) {
        Err(e) if e.to_string().contains("floating-point") => {}
        other => return Err(format!("Avg on int64 should be refused, got {other:?}").into()),
    }

    let root = env.world_size - 1;
    let mut ts = [
        Tensor::full([4], 100.0 * rank as f64, cpu()),
        Tensor::from_slice(&[rank as i64 + 7]),
    ];
    pg.broadcast(&mut ts, root)?;
    expect("broadcast", &ts[0], &[100.0 * root as f32; 4])?;
    expect("broadcast (int)", &ts[1], &[root as f32 + 7.0])?;

    let gathered = pg.all_gather(&Tensor::from_slice(&[rank, rank * 10.0]))?;
    if gathered.len() != env.world_size {
        return Err(format!("all_gather returned {} tensors", gathered.len()).into());
    }
    for (r, t) in gathered.iter().enumerate() {
        expect("all_gather", t, &[r as f32, r as f32 * 10.0])?;
    }

    // FSDP's pair: gather shards into one flat tensor, reduce-scatter it back.
    let shard = Tensor::from_slice(&[rank, rank + 0.5]);
    let mut flat = Tensor::zeros([2 * env.world_size as i64], cpu());
    pg.all_gather_into(&mut flat, &shard)?;
    let want: Vec<f32> = (0..env.world_size)
        .flat_map(|r| [r as f32, r as f32 + 0.5])
        .collect();
    expect("all_gather_into_tensor", &flat, &want)?;
    let full: Vec<f32> = (0..2 * env.world_size).map(|i| i as f32 + rank).collect();
    let mut mine = Tensor::zeros([2], cpu());
    pg.reduce_scatter_into(&mut mine, &Tensor::from_slice(&full), ReduceOp::Avg)?;
    let r0 = 2.0 * rank;
    let mean_rank = (world - 1.0) / 2.0;
    expect(
        "reduce_scatter_tensor avg",
        &mine,
        &[r0 + mean_rank, r0 + 1.0 + mean_rank],
    )?;
    match pg.reduce_scatter_into(&mut mine, &shard, ReduceOp::Sum) {
        Err(e) if world > 1.0 && e.to_string().contains("expected world size") => {}
        Ok(()) if world == 1.0 => {}
        other => {
            return Err(
                format!("a mis-sized reduce_scatter should be refused, got {other:?}").into(),
            )
        }
    }

    // Parameters (leaves requiring grad) take rank 0's values, other handles see them.
    tch::manual_seed(1000 + env.rank as i64);
    let params = [
        Tensor::randn([3, 4], cpu()).set_requires_grad(true),
        Tensor::randn([5], cpu()).set_requires_grad(true),
    ];
    let view = params[0].shallow_clone();
    pg.broadcast_coalesced(&params, 0)?;
    tch::manual_seed(1000);
    let (w0, b0) = (Tensor::randn([3, 4], cpu()), Tensor::randn([5], cpu()));
    expect("broadcast_coalesced", &params[0], &f32s(&w0)?)?;
    expect("broadcast_coalesced (2nd)", &params[1], &f32s(&b0)?)?;
    expect("broadcast_coalesced (shared handle)", &view, &f32s(&w0)?)?;
    if !params[0].requires_grad() {
        return Err("broadcast_coalesced dropped requires_grad".into());
    }

    // The store, across ranks: a value rank 0 sets, a counter everyone bumps.
    if env.rank == 0 {
        store.set("test/greeting", b"hello from 0")?;
    }
    if store.get("test/greeting")? != b"hello from 0" {
        return Err("store get".into());
    }
    store.add("test/arrived", 1)?;
    pg.barrier()?;
    let arrived = store.add("test/arrived", 0)?;
    if arrived != env.world_size as i64 {
        return Err(format!("store counter {arrived}").into());
    }
    store.wait(&["test/greeting", "test/arrived"])?;
    if !store.check(&["test/greeting"])? || store.check(&["test/absent"])? {
        return Err("store check".into());
    }
    pg.barrier()?;
    println!("OK collectives");
    Ok(())
}

/// A tiny MLP as plain tensors: `[w1, b1, w2, b2]`, 4 -> 8 (tanh) -> 3.
fn mlp(seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    [[8i64, 4].as_slice(), &[8], &[3, 8], &[3]]
        .iter()
        .map(|s| (Tensor::randn(*s, cpu()) * 0.5).set_requires_grad(true))
        .collect()
}

fn forward(p: &[Tensor], x: &Tensor) -> Tensor {
    x.matmul(&p[0].tr())
        .g_add(&p[1])
        .tanh()
        .matmul(&p[2].tr())
        .g_add(&p[3])
}

fn sgd(params: &[Tensor], lr: f64) {
    tch::no_grad(|| {
        for p in params {
            let g = p.grad();
            if g.defined() {
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&(g * lr)).expect("sgd");
            }
        }
    });
    // Zero in place, as torch.optim's zero_grad(set_to_none=False): with
    // gradient_as_bucket_view the grads are views into DDP's buckets, and tch's
    // `Tensor::zero_grad` (detach_ then zero_) is refused on views.
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// DDP training: `LDIST_STEPS` SGD steps, each over a global batch of 8 rows split into
/// `LDIST_ACCUM` micro-batches (all but the last under no_sync), each rank taking its
/// contiguous share of every micro-batch; compared with one process on the full batches.
fn ddp(env: &ClusterEnv, pg: &ProcessGroup) -> Res<()> {
    let steps: i64 = env_or("LDIST_STEPS", 5);
    let accum: i64 = env_or("LDIST_ACCUM", 1);
    let find_unused = env_or("LDIST_FIND_UNUSED", 0) == 1;
    let grad_as_view = env_or("LDIST_GRAD_AS_VIEW", 0) == 1;
    // Rank 1 leaves after this step's prepare_for_forward (a peer dying mid-training).
    let exit_at: Option<i64> = std::env::var("LDIST_EXIT_RANK1_AT_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    let cap: Option<f64> = std::env::var("LDIST_BUCKET_CAP_MB")
        .ok()
        .and_then(|v| v.parse().ok());
    let (batch, lr) = (8i64, 0.1);
    let world = env.world_size as i64;

    tch::manual_seed(7);
    let x = Tensor::randn([steps * batch, 4], cpu());
    let y = Tensor::randint(3, [steps * batch], (Kind::Int64, Device::Cpu));

    // Ranks start from different values: Reducer::new broadcasts rank 0's.
    let mut params = mlp(100 + env.rank as i64);
    // With find_unused_parameters, a parameter the forward never uses must not stall DDP.
    if find_unused {
        params.push(Tensor::ones([2], cpu()).set_requires_grad(true));
    }
    let opts = ReducerOptions {
        bucket_cap_mb: cap,
        find_unused_parameters: find_unused,
        gradient_as_bucket_view: grad_as_view,
        ..Default::default()
    };
    let mut reducer = Reducer::new(pg, &params, &opts)?;
    let micro = batch / accum;
    let share = micro / world;
    for s in 0..steps {
        for m in 0..accum {
            let start = s * batch + m * micro + env.rank as i64 * share;
            let (xs, ys) = (x.narrow(0, start, share), y.narrow(0, start, share));
            let sync = m == accum - 1;
            reducer.set_require_backward_grad_sync(sync);
            if reducer.prepare_for_forward()? {
                println!("rebuilt_at {s}");
            }
            if env.rank == 1 && exit_at == Some(s) {
                println!("leaving");
                std::process::exit(0);
            }
            let loss = forward(&params, &xs).cross_entropy_for_logits(&ys);
            reducer.prepare_for_backward(&[&loss])?;
            // The gradient all-reduce runs inside backward: its errors come out of f_backward.
            if let Err(e) = loss.f_backward() {
                if exit_at.is_none() {
                    return Err(e.into());
                }
                let first_line = e.to_string().lines().next().unwrap_or_default().to_owned();
                println!("backward_error {first_line}");
                println!("OK ddp-peer-exit");
                return Ok(());
            }
        }
        sgd(&params, lr);
    }
    println!("buckets {}", reducer.bucket_count()?);
    let mut bits = String::new();
    for p in &params {
        for v in f32s(p)? {
            bits.push_str(&format!("{:08x}", v.to_bits()));
        }
    }
    println!("weights {bits}");

    // One process, full batches, same start (rank 0's init), same micro-batches.
    let reference = mlp(100);
    for s in 0..steps {
        for m in 0..accum {
            let start = s * batch + m * micro;
            let (xs, ys) = (x.narrow(0, start, micro), y.narrow(0, start, micro));
            forward(&reference, &xs)
                .cross_entropy_for_logits(&ys)
                .backward();
        }
        sgd(&reference, lr);
    }
    let mut max_diff = 0f32;
    for (p, r) in params.iter().zip(&reference) {
        max_diff = max_diff.max((p - r).abs().max().double_value(&[]) as f32);
    }
    println!("maxdiff {max_diff:e}");
    pg.barrier()?;
    println!("OK ddp");
    Ok(())
}

/// Rank 1 leaves right after joining; rank 0's next collective must fail, not hang.
fn exit_early(env: &ClusterEnv, pg: &ProcessGroup) -> Res<()> {
    pg.barrier()?;
    if env.rank != 0 {
        println!("leaving");
        // Like a crash: no destructors, the OS closes the sockets.
        std::process::exit(0);
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut ts = [Tensor::ones([16], cpu())];
    match pg.all_reduce(&mut ts, ReduceOp::Sum) {
        Ok(()) => Err("all_reduce succeeded without the peer".into()),
        Err(e) => {
            println!("error_after_ms {}", started.elapsed().as_millis());
            println!("error {e}");
            println!("OK exit-early");
            Ok(())
        }
    }
}

/// Rank 1 stays alive but never joins the collective; rank 0's must fail at the group's
/// timeout. Rank 1 leaves once rank 0 says it is done (or is gone).
fn stall(env: &ClusterEnv, store: &Store, pg: &ProcessGroup) -> Res<()> {
    pg.barrier()?;
    if env.rank != 0 {
        let give_up = Instant::now() + Duration::from_secs(30);
        while Instant::now() < give_up {
            match store.check(&["stall/done"]) {
                Ok(false) => std::thread::sleep(Duration::from_millis(50)),
                Ok(true) | Err(_) => break,
            }
        }
        println!("leaving");
        std::process::exit(0);
    }
    let started = Instant::now();
    let mut ts = [Tensor::ones([16], cpu())];
    let outcome = pg.all_reduce(&mut ts, ReduceOp::Sum);
    let elapsed = started.elapsed();
    store.set("stall/done", b"1")?;
    match outcome {
        Ok(()) => Err("all_reduce succeeded without the peer".into()),
        Err(e) => {
            println!("error_after_ms {}", elapsed.as_millis());
            println!("error {e}");
            println!("OK stall");
            Ok(())
        }
    }
}

/// Gloo on CUDA tensors (the way to run two ranks on a one-GPU machine: NCCL refuses two
/// ranks on one GPU).
fn gloo_cuda(env: &ClusterEnv, pg: &ProcessGroup) -> Res<()> {
    let dev = Device::Cuda(0);
    let rank = env.rank as f32;
    let mut ts = [Tensor::from_slice(&[rank + 1.0, -rank]).to_device(dev)];
    pg.all_reduce(&mut ts, ReduceOp::Sum)?;
    let sum_plus_1: f32 = (1..=env.world_size).map(|r| r as f32).sum();
    let sum: f32 = (0..env.world_size).map(|r| r as f32).sum();
    expect(
        "cuda all_reduce sum",
        &ts[0].to_device(Device::Cpu),
        &[sum_plus_1, -sum],
    )?;
    let mut b = [Tensor::full([3], rank as f64, (Kind::Float, dev))];
    pg.broadcast(&mut b, 1)?;
    expect("cuda broadcast", &b[0].to_device(Device::Cpu), &[1.0; 3])?;
    let g = pg.all_gather(&Tensor::from_slice(&[rank]).to_device(dev))?;
    for (r, t) in g.iter().enumerate() {
        if t.device() != dev {
            return Err(format!("all_gather returned a tensor on {:?}", t.device()).into());
        }
        expect("cuda all_gather", &t.to_device(Device::Cpu), &[r as f32])?;
    }
    pg.barrier()?;
    println!("OK gloo-cuda");
    Ok(())
}

fn run(scenario: &str) -> Res<()> {
    tch::set_num_threads(1);
    // The tests start WORLD_SIZE ranks on one node, as a launcher with `LOCAL_RANK` does.
    let world: usize = env_or("WORLD_SIZE", 0);
    let env = ClusterEnv::from_process(world, 1)?;
    let timeout = Duration::from_millis(env_or("LDIST_TIMEOUT_MS", 30_000));
    let port = env.master_port.ok_or("MASTER_PORT is not set")?;
    let store = env.store(port, timeout)?;
    let pg = ProcessGroup::gloo(&store, env.rank, env.world_size, timeout)?;
    match scenario {
        "collectives" => collectives(&env, &store, &pg),
        "ddp" => ddp(&env, &pg),
        "exit-early" => exit_early(&env, &pg),
        "stall" => stall(&env, &store, &pg),
        "gloo-cuda" => gloo_cuda(&env, &pg),
        other => Err(format!("unknown scenario {other:?}").into()),
    }
}

fn main() -> ExitCode {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    match run(&scenario) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rank {:?}: {scenario}: {e}", std::env::var("RANK"));
            ExitCode::FAILURE
        }
    }
}
