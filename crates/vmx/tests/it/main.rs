//! Integration tests: realistic .vmx, .vmsd and catalog files through the public API.

mod catalog;
mod samples;
mod vmx_files;
