//! PCI configuration space for served devices.
