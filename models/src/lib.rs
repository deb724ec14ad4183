//! Transformer families for Cinder. Each family implements the engine's
//! [`CausalLm`](cinder_engine::lm::CausalLm) and reads and writes its upstream checkpoint layout.

pub mod gpt2;
