mod data_ddp;
mod sampler;
mod trainer_ddp;
