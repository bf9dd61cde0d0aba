//! The `pilotlight` command line.
