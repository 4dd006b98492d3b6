//! Reports: PNG charts ([`plots`]) for `compress` and the commands that write a report.
pub mod plots;
