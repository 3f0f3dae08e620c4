//! The [`DeviceContext`] a model gets while it handles one command: client
//! memory through a mapping or, without one, through DMA messages on the
//! link, each write logged while the client has DMA logging started; and
//! the session's interrupt state.

use super::dma::{DmaSpace, DmaTarget};
use super::irq::IrqState;
use super::link::Link;
use super::model::DeviceContext;
use crate::error::Result;

/// What a model sees of the session while it handles one request.
pub(super) struct Ctx<'s> {
    pub(super) link: &'s mut Link,
    pub(super) dma: &'s mut DmaSpace,
    pub(super) irqs: &'s mut IrqState,
}

impl DeviceContext for Ctx<'_> {
    fn dma_read(&mut self, iova: u64, buf: &mut [u8]) -> Result<()> {
        match self.dma.target(iova, buf.len(), false)? {
            DmaTarget::Mapped(m, off) => m.read(off, buf),
            DmaTarget::Message => self.link.dma_message(iova, Some(buf), None),
        }
    }

    fn dma_write(&mut self, iova: u64, buf: &[u8]) -> Result<()> {
        // Logged in the dirty log here, for every model, mapped or not.
        match self.dma.write_target(iova, buf.len())? {
            DmaTarget::Mapped(m, off) => m.write(off, buf),
            DmaTarget::Message => self.link.dma_message(iova, None, Some(buf)),
        }
    }

    fn irq_enabled(&self, index: u32, vector: u32) -> bool {
        self.irqs.enabled(index, vector)
    }

    fn trigger_irq(&mut self, index: u32, vector: u32) -> bool {
        self.irqs.trigger(index, vector)
    }

    fn set_irq_level(&mut self, index: u32, vector: u32, asserted: bool) {
        self.irqs.set_level(index, vector, asserted)
    }
}
