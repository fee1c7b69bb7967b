//! Samplers (diffusers calls them schedulers). See the module docs written with the
//! implementation.
