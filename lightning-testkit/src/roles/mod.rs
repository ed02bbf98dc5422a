//! What each role of the root package's `test-child` binary runs, shared with the test that
//! starts it (constants, env var names, and the training a test also runs in-process).

pub mod crash_harness;
pub mod data_ddp;
pub mod ddp;
pub mod failing_save;
pub mod fsdp;
pub mod preempt;
pub mod save_faults;
