//! The Cranelift JIT module and the contexts reused while building one
//! graph's function (the `JIT` struct of cranelift-jit-demo).

use crate::{runtime, Error, Result};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};

/// A JIT module for the host with the runtime helpers registered.
pub(crate) struct Jit {
    /// The module that owns the generated code.
    pub module: JITModule,
    /// The function being compiled.
    pub ctx: Context,
    /// The frontend's scratch state.
    pub builder_ctx: FunctionBuilderContext,
}

impl Jit {
    /// A module for the host ISA (with its native features, FMA and AVX
    /// included), optimizing for speed, with Cranelift's IR verifier on
    /// when `verify`.
    ///
    /// # Errors
    /// [`Error::UnsupportedHost`] if `cranelift_native` does not know the
    /// host; setting errors.
    pub fn new(verify: bool) -> Result<Self> {
        let mut flags = settings::builder();
        flags.set("use_colocated_libcalls", "false")?;
        flags.set("is_pic", "false")?;
        flags.set("opt_level", "speed")?;
        flags.set("enable_verifier", if verify { "true" } else { "false" })?;
        let isa = cranelift_native::builder()
            .map_err(|msg| Error::UnsupportedHost(msg.to_string()))?
            .finish(settings::Flags::new(flags))?;
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        for (name, ptr) in runtime::symbols() {
            builder.symbol(name, ptr);
        }
        let module = JITModule::new(builder);
        let ctx = module.make_context();
        Ok(Self {
            module,
            ctx,
            builder_ctx: FunctionBuilderContext::new(),
        })
    }
}
