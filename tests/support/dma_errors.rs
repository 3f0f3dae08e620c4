//! Hooks that record the errno of every DMA copy a model asked for and did
//! not get (edu itself only logs it), so a test sees what the model saw.
//! Include it after `forwarding_model` with
//! `#[path = "support/dma_errors.rs"] mod dma_errors;`.

use std::sync::{Arc, Mutex};

use vfio_io::user::server::{DeviceContext, DeviceModel};
use vfio_io::Result;

use crate::forwarding_model::{Call, Hooks, Wrapped};

/// The errnos of the failed DMA copies, in order.
pub type DmaErrors = Arc<Mutex<Vec<i32>>>;

/// `model` with its failed DMA copies recorded in the returned list.
pub fn recording_dma_errors<M: DeviceModel>(model: M) -> (Wrapped<M, RecordDmaErrors>, DmaErrors) {
    let errors = DmaErrors::default();
    (Wrapped::new(model, RecordDmaErrors(errors.clone())), errors)
}

/// Hands the model a context that records each failed DMA copy.
pub struct RecordDmaErrors(DmaErrors);

impl<M: DeviceModel> Hooks<M> for RecordDmaErrors {
    fn call(&mut self, inner: &mut M, ctx: &mut dyn DeviceContext, call: Call<'_>) -> Result<()> {
        let mut recording = Recording {
            inner: ctx,
            errors: &self.0,
        };
        call.apply(inner, &mut recording)
    }
}

/// The session's context, recording the errno of each failed DMA copy.
struct Recording<'a> {
    inner: &'a mut dyn DeviceContext,
    errors: &'a Mutex<Vec<i32>>,
}

impl Recording<'_> {
    fn note(&self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.errors.lock().unwrap().push(e.errno());
        }
        r
    }
}

impl DeviceContext for Recording<'_> {
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.inner.dma_read(iova, buf);
        self.note(r)
    }
    fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()> {
        let r = self.inner.dma_write(iova, buf);
        self.note(r)
    }
    fn irq_enabled(&self, index: u32, vector: u32) -> bool {
        self.inner.irq_enabled(index, vector)
    }
    fn trigger_irq(&mut self, index: u32, vector: u32) -> bool {
        self.inner.trigger_irq(index, vector)
    }
    fn set_irq_level(&mut self, index: u32, vector: u32, asserted: bool) {
        self.inner.set_irq_level(index, vector, asserted)
    }
}
