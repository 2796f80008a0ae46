//! `#[derive(Region)]` for crl (in progress).
use proc_macro::TokenStream;

/// Derives `crl::Region` for a struct or enum.
#[proc_macro_derive(Region, attributes(region))]
pub fn derive_region(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
