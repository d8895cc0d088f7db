//! The `#[job]` attribute of the fnhost guest SDK.
//!
//! It turns one plain Rust function into the component's `handle` export. It
//! knows only the SDK's public paths (`::fnhost_sdk::…`), nothing of the host.

use proc_macro::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, parse_macro_input, spanned::Spanned};

/// Marks the function that handles every event sent to this job.
///
/// The function takes either the event alone or the invocation and the
/// event, and returns `fnhost_sdk::Result<Output>`:
///
/// ```text
/// #[fnhost_sdk::job]
/// fn hello(event: fnhost_sdk::Event) -> fnhost_sdk::Result<fnhost_sdk::Output> { … }
///
/// #[fnhost_sdk::job]
/// fn hello(inv: fnhost_sdk::Invocation, event: fnhost_sdk::Event) -> fnhost_sdk::Result<fnhost_sdk::Output> { … }
/// ```
///
/// Exactly one function per component may carry it.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), "#[job] takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    let name = &func.sig.ident;
    if func.sig.asyncness.is_some() {
        return syn::Error::new(func.sig.span(), "#[job] functions must not be async")
            .to_compile_error()
            .into();
    }
    if !func.sig.generics.params.is_empty() {
        return syn::Error::new(
            func.sig.generics.span(),
            "#[job] functions cannot be generic",
        )
        .to_compile_error()
        .into();
    }
    if let Some(receiver) = func
        .sig
        .inputs
        .iter()
        .find(|a| matches!(a, FnArg::Receiver(_)))
    {
        return syn::Error::new(
            receiver.span(),
            "#[job] must be a free function, not a method",
        )
        .to_compile_error()
        .into();
    }
    let call = match func.sig.inputs.len() {
        1 => quote! { #name(event) },
        2 => quote! { #name(inv, event) },
        _ => {
            return syn::Error::new(
                func.sig.inputs.span(),
                "#[job] functions take `(event: Event)` or `(inv: Invocation, event: Event)`",
            )
            .to_compile_error()
            .into();
        }
    };
    quote! {
        #func

        #[doc(hidden)]
        const _: () = {
            struct FnhostJob;
            impl ::fnhost_sdk::bindings::Guest for FnhostJob {
                #[allow(unused_variables)]
                fn handle(
                    inv: ::fnhost_sdk::Invocation,
                    event: ::fnhost_sdk::Event,
                ) -> ::core::result::Result<::fnhost_sdk::Output, ::fnhost_sdk::bindings::JobError> {
                    ::fnhost_sdk::__private::finish(#call)
                }
            }
            ::fnhost_sdk::bindings::export_job!(FnhostJob);
        };
    }
    .into()
}
