//! `#[derive(Region)]` for crl.
//!
//! The derive makes a plain struct or enum a region value type: it implements `crl::Region`
//! (encode/decode in crl's pinned rkyv wire format, a stable fingerprint) and rkyv's
//! `Archive`/`Serialize`/`Deserialize`, without the user depending on rkyv.
//!
//! # How
//!
//! A derive cannot add attributes to its input, so it emits a hidden *remote shadow*: a copy of
//! the type (same generics, fields and variants) carrying rkyv 0.8's
//! `#[derive(Archive, Serialize, Deserialize)] #[rkyv(remote = UserType, archived =
//! ArchivedUserType, resolver = UserTypeResolver)]`. rkyv then implements
//! `ArchiveWith<UserType>` & co. for the shadow, and the derive implements `Archive`,
//! `Serialize` and `Deserialize` for the user type by delegating to it (plus `From<Shadow> for
//! UserType`, which rkyv's remote deserialization needs). The user type *is* then an rkyv type,
//! so region types nest, and `Vec<T>`, `Option<T>`, `Box<T>`, enums and generics work.
//!
//! Emitted items, for `struct Flight`, all inside an anonymous `const _: () = { ... };` block
//! (so nothing is added to the user's namespace): the shadow `__FlightRegionShadow`, its
//! archived form `ArchivedFlight` (reachable from outside as `rkyv::Archived<Flight>`) and
//! resolver `FlightResolver`, and impls of `rkyv::{Archive, Serialize, Deserialize}`,
//! `crl::RegionField` and `crl::Region` for `Flight`.
//!
//! # Attributes
//!
//! - `#[region(crate = path)]` on the type: the path of the crate that re-exports `Region`,
//!   `RegionField`, `CodecError` and `__private::rkyv` (default `::crl`; crl-core itself uses
//!   `crate`).
//! - `#[region(omit_bounds)]` on a field: for recursive types (`Option<Box<Self>>`,
//!   `Vec<Self>`), omits the field's rkyv bounds (rkyv's `omit_bounds`), which would otherwise
//!   be cyclic. The field's type is then not folded into the fingerprint (see below).
//!
//! # Fingerprint
//!
//! `Region::FINGERPRINT` is FNV-1a 64 computed at expansion time over a canonical text of the
//! definition (`struct`/`enum`, name, generic parameters and where clause, variant names,
//! field names and field type tokens, in order), then folded at compile time (const
//! evaluation) with the `RegionField::FIELD_FINGERPRINT` of every field type not marked
//! `omit_bounds`, so changing a nested region type changes the outer fingerprint too. It is
//! identical on every platform and build. Limits: types are compared by their tokens as
//! written, so `Vec<u32>` and `std::vec::Vec<u32>` (or a type alias) give different
//! fingerprints for the same layout; the target type of a `RegionRef<T>` and the types of
//! `omit_bounds` fields are only covered by their tokens.
//!
//! # Rejected input
//!
//! Unions and lifetime parameters give a `compile_error!`. Each field's type must implement
//! `RegionField` (primitives, `String`, `Vec`, `Option`, `Box`, arrays, tuples up to 4,
//! `RegionId`, `NodeId`, `RegionRef<T>` and derived region types); other types (references,
//! raw pointers, `Rc`, `Cell`, `RefCell`, ...) are reported at the field by the trait's
//! `#[diagnostic::on_unimplemented]` message.

use proc_macro::TokenStream;
use proc_macro2::{Delimiter, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Fields, Generics, Ident, Path, Type, WherePredicate, parse_macro_input,
    parse_quote,
};

/// Derives `crl::Region` (and rkyv's `Archive`, `Serialize`, `Deserialize`) for a struct or
/// enum. See the crate documentation for the attributes and what is emitted.
#[proc_macro_derive(Region, attributes(region))]
pub fn derive_region(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// One field of the input (of a struct or of a variant).
struct FieldInfo {
    /// `Some(name)` for named fields.
    ident: Option<Ident>,
    vis: syn::Visibility,
    ty: Type,
    omit_bounds: bool,
}

/// Fields of a struct or a variant.
struct Shape {
    style: Style,
    fields: Vec<FieldInfo>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Named,
    Tuple,
    Unit,
}

struct VariantInfo {
    ident: Ident,
    discriminant: Option<syn::Expr>,
    shape: Shape,
}

enum Body {
    Struct(Shape),
    Enum(Vec<VariantInfo>),
}

fn parse_type_attrs(input: &DeriveInput) -> syn::Result<Path> {
    let mut krate: Path = parse_quote!(::crl);
    for attr in &input.attrs {
        if !attr.path().is_ident("region") {
            continue;
        }
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                krate = meta.value()?.parse()?;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `region` attribute on a type: expected `#[region(crate = path)]`",
                ))
            }
        })?;
    }
    Ok(krate)
}

fn parse_fields(fields: &Fields) -> syn::Result<Shape> {
    let style = match fields {
        Fields::Named(_) => Style::Named,
        Fields::Unnamed(_) => Style::Tuple,
        Fields::Unit => Style::Unit,
    };
    let mut out = Vec::new();
    for f in fields.iter() {
        let mut omit_bounds = false;
        for attr in &f.attrs {
            if !attr.path().is_ident("region") {
                continue;
            }
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("omit_bounds") {
                    omit_bounds = true;
                    Ok(())
                } else {
                    Err(meta.error(
                        "unknown `region` attribute on a field: expected `#[region(omit_bounds)]`",
                    ))
                }
            })?;
        }
        out.push(FieldInfo {
            ident: f.ident.clone(),
            vis: f.vis.clone(),
            ty: f.ty.clone(),
            omit_bounds,
        });
    }
    Ok(Shape { style, fields: out })
}

fn check_generics(generics: &Generics) -> syn::Result<()> {
    if let Some(lt) = generics.lifetimes().next() {
        return Err(syn::Error::new(
            lt.span(),
            "#[derive(Region)]: region types cannot have lifetime parameters; a region value \
             must own all its data (it is copied between nodes), so use owned types such as \
             `String` or `Vec<T>` instead of references",
        ));
    }
    Ok(())
}

/// Appends a canonical text of `tokens` (single spaces between tokens, independent of spans
/// and of how the source was formatted) to `out`.
fn canonical_tokens(tokens: TokenStream2, out: &mut String) {
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push(' ');
                canonical_tokens(g.stream(), out);
                out.push_str(close);
                out.push(' ');
            }
            TokenTree::Ident(i) => {
                out.push_str(&i.to_string());
                out.push(' ');
            }
            TokenTree::Punct(p) => {
                out.push(p.as_char());
                out.push(' ');
            }
            TokenTree::Literal(l) => {
                out.push_str(&l.to_string());
                out.push(' ');
            }
        }
    }
}

fn canonical<T: ToTokens>(t: &T) -> String {
    let mut s = String::new();
    canonical_tokens(t.to_token_stream(), &mut s);
    s
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn canonical_shape(shape: &Shape, out: &mut String) {
    let (open, close) = match shape.style {
        Style::Named => ("{", "}"),
        Style::Tuple => ("(", ")"),
        Style::Unit => ("", ";"),
    };
    out.push_str(open);
    for (i, f) in shape.fields.iter().enumerate() {
        match &f.ident {
            Some(id) => out.push_str(&id.to_string()),
            None => out.push_str(&i.to_string()),
        }
        out.push(':');
        out.push_str(&canonical(&f.ty));
        out.push(';');
    }
    out.push_str(close);
}

/// Whether a field type is syntactically certain not to be storable in a region. When one is
/// found only the field assertions are emitted (not the rkyv code), so the user sees the clear
/// `RegionField` message rather than a cascade of rkyv trait errors.
fn obviously_unsupported(ty: &Type) -> bool {
    match ty {
        Type::Reference(_)
        | Type::Ptr(_)
        | Type::BareFn(_)
        | Type::TraitObject(_)
        | Type::ImplTrait(_)
        | Type::Never(_)
        | Type::Infer(_) => true,
        Type::Paren(p) => obviously_unsupported(&p.elem),
        Type::Group(g) => obviously_unsupported(&g.elem),
        Type::Array(a) => obviously_unsupported(&a.elem),
        Type::Slice(s) => obviously_unsupported(&s.elem),
        Type::Tuple(t) => t.elems.iter().any(obviously_unsupported),
        Type::Path(p) => p.path.segments.iter().any(|seg| {
            let name = seg.ident.to_string();
            matches!(
                name.as_str(),
                "Rc" | "Weak"
                    | "Cell"
                    | "RefCell"
                    | "UnsafeCell"
                    | "OnceCell"
                    | "Arc"
                    | "Mutex"
                    | "RwLock"
            ) || match &seg.arguments {
                syn::PathArguments::AngleBracketed(args) => args.args.iter().any(|a| match a {
                    syn::GenericArgument::Type(t) => obviously_unsupported(t),
                    _ => false,
                }),
                _ => false,
            }
        }),
        _ => false,
    }
}

/// Emits the fields of a shadow struct or variant (no attributes but `omit_bounds`).
fn shadow_fields(shape: &Shape) -> TokenStream2 {
    let fields = shape.fields.iter().map(|f| {
        let vis = &f.vis;
        let ty = &f.ty;
        let omit = if f.omit_bounds {
            quote!(#[rkyv(omit_bounds)])
        } else {
            quote!()
        };
        match &f.ident {
            Some(id) => quote!(#omit #vis #id: #ty),
            None => quote!(#omit #vis #ty),
        }
    });
    match shape.style {
        Style::Named => quote!({ #(#fields,)* }),
        Style::Tuple => quote!(( #(#fields,)* )),
        Style::Unit => quote!(),
    }
}

/// Pattern binding all fields of a shape (as `__f0`, `__f1`, ...) and the matching
/// constructor arguments.
fn bind_fields(shape: &Shape) -> (TokenStream2, TokenStream2) {
    let names: Vec<Ident> = (0..shape.fields.len())
        .map(|i| format_ident!("__f{}", i))
        .collect();
    match shape.style {
        Style::Named => {
            let ids: Vec<&Ident> = shape
                .fields
                .iter()
                .map(|f| f.ident.as_ref().expect("named field"))
                .collect();
            (quote!({ #(#ids: #names,)* }), quote!({ #(#ids: #names,)* }))
        }
        Style::Tuple => (quote!(( #(#names,)* )), quote!(( #(#names,)* ))),
        Style::Unit => (quote!(), quote!()),
    }
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let krate = parse_type_attrs(&input)?;
    check_generics(&input.generics)?;

    let body = match &input.data {
        Data::Struct(s) => Body::Struct(parse_fields(&s.fields)?),
        Data::Enum(e) => {
            let mut variants = Vec::new();
            for v in &e.variants {
                variants.push(VariantInfo {
                    ident: v.ident.clone(),
                    discriminant: v.discriminant.as_ref().map(|(_, e)| e.clone()),
                    shape: parse_fields(&v.fields)?,
                });
            }
            Body::Enum(variants)
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(Region)] does not support unions: a region's bytes must be validated \
                 when received, and a union's active field cannot be checked; use an enum",
            ));
        }
    };

    let name = &input.ident;
    let vis = &input.vis;
    let generics = &input.generics;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let rkyv: TokenStream2 = quote!(#krate::__private::rkyv);
    let shadow = format_ident!("__{}RegionShadow", name);
    let archived = format_ident!("Archived{}", name);
    let resolver = format_ident!("{}Resolver", name);
    let type_params: Vec<&Ident> = generics.type_params().map(|p| &p.ident).collect();

    let all_fields: Vec<&FieldInfo> = match &body {
        Body::Struct(s) => s.fields.iter().collect(),
        Body::Enum(vs) => vs.iter().flat_map(|v| v.shape.fields.iter()).collect(),
    };

    // --- Per-field assertions: each field type must implement RegionField. The call is
    // spanned at the field's type so the diagnostic points at it. A field folded into the
    // fingerprint is already checked there (`<FieldTy as RegionField>::FIELD_FINGERPRINT`,
    // spanned the same way), so only `omit_bounds` fields need an explicit assertion, unless
    // nothing but the assertions is emitted (see `obviously_unsupported`).
    let region_field = quote!(#krate::RegionField);
    let only_asserts = all_fields.iter().any(|f| obviously_unsupported(&f.ty));
    let asserts = all_fields
        .iter()
        .filter(|f| only_asserts || f.omit_bounds)
        .map(|f| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=> __crl_assert_region_field::<#ty>();)
        });
    let mut assert_generics = generics.clone();
    for p in assert_generics.type_params_mut() {
        p.bounds.push(parse_quote!(#region_field));
    }
    let (assert_impl_generics, _, assert_where) = assert_generics.split_for_impl();
    let field_asserts = quote! {
        const _: () = {
            fn __crl_assert_region_field<T: #region_field + ?::core::marker::Sized>() {}
            #[allow(dead_code, clippy::extra_unused_type_parameters)]
            fn __crl_assert_fields #assert_impl_generics () #assert_where {
                #(#asserts)*
            }
        };
    };

    if only_asserts {
        return Ok(field_asserts);
    }

    // --- Canonical text and local fingerprint.
    let mut canon = String::new();
    match &body {
        Body::Struct(s) => {
            canon.push_str("struct ");
            canon.push_str(&name.to_string());
            canon.push_str(&canonical(generics));
            canon.push_str(&canonical(&where_clause));
            canonical_shape(s, &mut canon);
        }
        Body::Enum(vs) => {
            canon.push_str("enum ");
            canon.push_str(&name.to_string());
            canon.push_str(&canonical(generics));
            canon.push_str(&canonical(&where_clause));
            canon.push('{');
            for v in vs {
                canon.push_str(&v.ident.to_string());
                if let Some(d) = &v.discriminant {
                    canon.push('=');
                    canon.push_str(&canonical(d));
                }
                canonical_shape(&v.shape, &mut canon);
                canon.push(',');
            }
            canon.push('}');
        }
    }
    let local_fp = fnv1a64(canon.as_bytes());
    let nested_fps: Vec<TokenStream2> = all_fields
        .iter()
        .filter(|f| !f.omit_bounds)
        .map(|f| {
            let ty = &f.ty;
            quote_spanned!(ty.span()=> <#ty as #region_field>::FIELD_FINGERPRINT)
        })
        .collect();
    let n_parts = nested_fps.len() + 1;

    // --- The shadow.
    let any_omit = all_fields.iter().any(|f| f.omit_bounds);
    let omit_bounds_attrs = if any_omit {
        quote! {
            #[rkyv(serialize_bounds(
                __S: #rkyv::ser::Writer + #rkyv::ser::Allocator,
                __S::Error: #rkyv::rancor::Source,
            ))]
            #[rkyv(deserialize_bounds(__D::Error: #rkyv::rancor::Source))]
            #[rkyv(bytecheck(bounds(
                __C: #rkyv::validation::ArchiveContext,
                __C::Error: #rkyv::rancor::Source,
            )))]
        }
    } else {
        quote!()
    };
    let shadow_doc =
        format!("Hidden rkyv remote shadow of [`{name}`], generated by `#[derive(Region)]`.");
    let shadow_item = match &body {
        Body::Struct(s) => {
            let fields = shadow_fields(s);
            match s.style {
                Style::Named => quote!(#vis struct #shadow #generics #where_clause #fields),
                Style::Tuple => quote!(#vis struct #shadow #generics #fields #where_clause;),
                Style::Unit => quote!(#vis struct #shadow #generics #where_clause;),
            }
        }
        Body::Enum(vs) => {
            let variants = vs.iter().map(|v| {
                let id = &v.ident;
                let fields = shadow_fields(&v.shape);
                let disc = v.discriminant.as_ref().map(|d| quote!(= #d));
                quote!(#id #fields #disc)
            });
            quote!(#vis enum #shadow #generics #where_clause { #(#variants,)* })
        }
    };
    let shadow_def = quote! {
        #[doc = #shadow_doc]
        #[doc(hidden)]
        #[allow(missing_docs, dead_code, non_camel_case_types, clippy::all)]
        #[derive(#rkyv::Archive, #rkyv::Serialize, #rkyv::Deserialize)]
        #[rkyv(
            crate = #rkyv,
            remote = #name #ty_generics,
            archived = #archived,
            resolver = #resolver,
        )]
        #[rkyv(attr(allow(missing_docs)))]
        #omit_bounds_attrs
        #shadow_item
    };

    // --- From<Shadow> for User (needed by rkyv's remote Deserialize).
    let from_body = match &body {
        Body::Struct(s) => {
            let (pat, ctor) = bind_fields(s);
            quote! {
                let #shadow #pat = __shadow;
                #name #ctor
            }
        }
        Body::Enum(vs) => {
            let arms = vs.iter().map(|v| {
                let id = &v.ident;
                let (pat, ctor) = bind_fields(&v.shape);
                quote!(#shadow::#id #pat => #name::#id #ctor,)
            });
            quote!(match __shadow { #(#arms)* })
        }
    };
    let from_impl = quote! {
        #[automatically_derived]
        impl #impl_generics ::core::convert::From<#shadow #ty_generics> for #name #ty_generics
        #where_clause
        {
            #[allow(clippy::redundant_field_names)]
            fn from(__shadow: #shadow #ty_generics) -> Self {
                #from_body
            }
        }
    };

    // --- Delegating rkyv impls.
    let user_ty = quote!(#name #ty_generics);
    let shadow_ty = quote!(#shadow #ty_generics);
    let archived_ty = quote!(#archived #ty_generics);
    // The impls carry the same bounds as rkyv's impls for the shadow (one per field not
    // marked `omit_bounds`, plus the serializer/deserializer bounds `omit_bounds` needs), not
    // a `Shadow: ArchiveWith<User>` predicate: such a where clause would shadow the impl and
    // stop rustc from normalizing the shadow's associated types in generic code.
    let live_fields: Vec<&Type> = all_fields
        .iter()
        .filter(|f| !f.omit_bounds)
        .map(|f| &f.ty)
        .collect();
    let make_where = |preds: Vec<WherePredicate>| -> TokenStream2 {
        let mut g = generics.clone();
        g.make_where_clause().predicates.extend(preds);
        let wc = g.where_clause;
        quote!(#wc)
    };
    let archive_where = make_where(
        live_fields
            .iter()
            .map(|ty| parse_quote!(#ty: #rkyv::Archive))
            .collect(),
    );
    let mut ser_preds: Vec<WherePredicate> = live_fields
        .iter()
        .map(|ty| parse_quote!(#ty: #rkyv::Serialize<__S>))
        .collect();
    let mut de_preds: Vec<WherePredicate> = live_fields
        .iter()
        .flat_map(|ty| -> [WherePredicate; 2] {
            [
                parse_quote!(#ty: #rkyv::Archive),
                parse_quote!(<#ty as #rkyv::Archive>::Archived: #rkyv::Deserialize<#ty, __D>),
            ]
        })
        .collect();
    if any_omit {
        ser_preds.push(parse_quote!(__S: #rkyv::ser::Writer + #rkyv::ser::Allocator));
        ser_preds
            .push(parse_quote!(<__S as #rkyv::rancor::Fallible>::Error: #rkyv::rancor::Source));
        de_preds.push(parse_quote!(<__D as #rkyv::rancor::Fallible>::Error: #rkyv::rancor::Source));
    }
    let ser_where = make_where(ser_preds);
    let de_where = make_where(de_preds);

    let mut ser_generics = generics.clone();
    ser_generics
        .params
        .push(parse_quote!(__S: #rkyv::rancor::Fallible + ?::core::marker::Sized));
    let (ser_impl_generics, _, _) = ser_generics.split_for_impl();

    let mut de_generics = generics.clone();
    de_generics
        .params
        .push(parse_quote!(__D: #rkyv::rancor::Fallible + ?::core::marker::Sized));
    let (de_impl_generics, _, _) = de_generics.split_for_impl();

    let rkyv_impls = quote! {
        #[automatically_derived]
        impl #impl_generics #rkyv::Archive for #user_ty #archive_where {
            type Archived = #archived_ty;
            type Resolver = #resolver #ty_generics;

            #[inline]
            fn resolve(&self, resolver: Self::Resolver, out: #rkyv::Place<Self::Archived>) {
                <#shadow_ty as #rkyv::with::ArchiveWith<#user_ty>>::resolve_with(self, resolver, out)
            }
        }

        #[automatically_derived]
        impl #ser_impl_generics #rkyv::Serialize<__S> for #user_ty #ser_where {
            #[inline]
            fn serialize(
                &self,
                serializer: &mut __S,
            ) -> ::core::result::Result<
                <Self as #rkyv::Archive>::Resolver,
                <__S as #rkyv::rancor::Fallible>::Error,
            > {
                <#shadow_ty as #rkyv::with::SerializeWith<#user_ty, __S>>::serialize_with(
                    self, serializer,
                )
            }
        }

        #[automatically_derived]
        impl #de_impl_generics #rkyv::Deserialize<#user_ty, __D> for #archived_ty #de_where {
            #[inline]
            fn deserialize(
                &self,
                deserializer: &mut __D,
            ) -> ::core::result::Result<#user_ty, <__D as #rkyv::rancor::Fallible>::Error> {
                <#shadow_ty as #rkyv::with::DeserializeWith<#archived_ty, #user_ty, __D>>::deserialize_with(
                    self, deserializer,
                )
            }
        }
    };

    // --- RegionField (with the folded fingerprint) and Region.
    let region_field_impl = quote! {
        #[automatically_derived]
        impl #assert_impl_generics #region_field for #user_ty #assert_where {
            const FIELD_FINGERPRINT: u64 = {
                let parts: [u64; #n_parts] = [#local_fp, #(#nested_fps,)*];
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                let mut i = 0;
                while i < #n_parts {
                    let bytes = parts[i].to_le_bytes();
                    let mut j = 0;
                    while j < 8 {
                        h ^= bytes[j] as u64;
                        h = h.wrapping_mul(0x0000_0100_0000_01b3);
                        j += 1;
                    }
                    i += 1;
                }
                h
            };
        }
    };

    let mut region_generics = generics.clone();
    {
        let wc = region_generics.make_where_clause();
        for ty in &live_fields {
            wc.predicates.push(parse_quote!(#ty: #rkyv::Archive));
        }
        for p in &type_params {
            wc.predicates
                .push(parse_quote!(#p: #region_field + 'static));
        }
        wc.predicates.push(parse_quote!(
            Self: ::core::marker::Send + ::core::marker::Sync + 'static
                + for<'__a> #rkyv::Serialize<#rkyv::api::high::HighSerializer<
                    ::std::vec::Vec<u8>,
                    #rkyv::ser::allocator::ArenaHandle<'__a>,
                    #rkyv::rancor::Error,
                >>
        ));
        // Stated on the projection, not on `#archived`: the `Self: Serialize` bound above puts
        // `Self: Archive` in the environment, which stops the projection from normalizing.
        wc.predicates.push(parse_quote!(
            <Self as #rkyv::Archive>::Archived: for<'__a> #rkyv::bytecheck::CheckBytes<
                    #rkyv::api::high::HighValidator<'__a, #rkyv::rancor::Error>,
                > + #rkyv::Deserialize<Self, #rkyv::api::high::HighDeserializer<#rkyv::rancor::Error>>
        ));
    }
    let region_where = &region_generics.where_clause;
    let type_name = name.to_string();
    let region_impl = quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Region for #user_ty #region_where {
            const TYPE_NAME: &'static str = #type_name;
            const FINGERPRINT: u64 = <Self as #region_field>::FIELD_FINGERPRINT;

            fn encode_region(&self) -> ::core::result::Result<::std::vec::Vec<u8>, #krate::CodecError> {
                // Into a plain `Vec` (rkyv aligns relative to the buffer's start, and
                // `decode_region` aligns what it reads): `AlignedVec::into_vec` would copy
                // the whole image once more, which a big region pays on every miss.
                #rkyv::api::high::to_bytes_in::<_, #rkyv::rancor::Error>(self, ::std::vec::Vec::new())
                    .map_err(|e| #krate::CodecError::Encode {
                        type_name: <Self as #krate::Region>::TYPE_NAME,
                        reason: ::std::string::ToString::to_string(&e),
                    })
            }

            fn decode_region(bytes: &[u8]) -> ::core::result::Result<Self, #krate::CodecError> {
                // Validation checks alignment; received bytes may sit anywhere in a buffer, so
                // copy them into an aligned buffer unless they already are aligned.
                const ALIGN: usize = 16;
                let result = if (bytes.as_ptr() as usize) % ALIGN == 0 {
                    #rkyv::from_bytes::<Self, #rkyv::rancor::Error>(bytes)
                } else {
                    let mut aligned = #rkyv::util::AlignedVec::<ALIGN>::with_capacity(bytes.len());
                    aligned.extend_from_slice(bytes);
                    #rkyv::from_bytes::<Self, #rkyv::rancor::Error>(&aligned)
                };
                result.map_err(|e| #krate::CodecError::Invalid {
                    type_name: <Self as #krate::Region>::TYPE_NAME,
                    reason: ::std::string::ToString::to_string(&e),
                })
            }
        }
    };

    // Everything lives in an anonymous const block: the shadow, its archived type and its
    // resolver are unreachable from outside (so `missing_docs` does not ask for docs on
    // rkyv-generated items, and no names leak into the user's module), yet the block sees
    // the user's items, including types local to a function body. The archived type stays
    // reachable as `rkyv::Archived<UserType>`.
    Ok(quote! {
        const _: () = {
            #shadow_def
            #from_impl
            #rkyv_impls
            #region_field_impl
            #region_impl
        };
        #field_asserts
    })
}
