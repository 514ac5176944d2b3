//! The model every command shares: CLIP towers with projection heads into a joint space.
//!
//! - [`twin`]: the twin towers, [`twin::TwinTowers`] (the CLIP towers of [`crate::clip`] + one head per tower)
//!   and the freeze policies training applies to it;
//! - [`heads`]: linear, CLIP-Adapter and identity heads;
//! - [`init`]: reproducible random initialisation (one process-wide lock over burn's generator);
//! - [`folder`]: the model folder `siam train` writes (`siam.json` + `model.safetensors`) and
//!   every other command loads;
//! - [`encoder`]: [`Encoder`], inference on any model siam can load (a model folder, a Hugging
//!   Face folder, an OpenAI/open_clip checkpoint), used by `embed`, `classify`, `index`,
//!   `query`, `eval` and by training's own index.
//!
//! Training ([`crate::train`]), the index ([`crate::index`]), evaluation ([`crate::eval`]) and
//! the binary use this module; it uses none of them (its unit tests aside).

pub mod encoder;
pub mod folder;
pub mod heads;
pub mod init;
pub mod twin;

pub use encoder::Encoder;
