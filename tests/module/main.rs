mod expansion;
mod hparams;
mod loading_python;
mod name_parity;
mod traverse;
