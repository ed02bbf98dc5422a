mod sampler;
mod trainer_ddp;
