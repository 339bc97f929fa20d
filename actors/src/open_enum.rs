//! Open string enums for wire vocabularies.
//!
//! Error codes, hint kinds and event kinds all cross process and version
//! boundaries: a tool written against a newer hale (or a foreign MCP server)
//! may send a value this build has never heard of. Rejecting the whole
//! message for one unknown word would turn a harmless vocabulary mismatch
//! into a failure, so each of these enums keeps an `Other(String)` fallback
//! that round-trips the unknown value unchanged. The macro exists so the
//! three vocabularies share one reading rule instead of three hand-written
//! copies that could drift apart.

/// Declares an open enum: known unit variants with a fixed wire spelling,
/// plus one `Other(String)` variant that carries any other spelling.
///
/// The fallback is declared first (`other Other;`) only because the macro
/// parser cannot otherwise tell its doc comments from the known variants'.
///
/// Reading is case-insensitive for known spellings (peers are inconsistent
/// about case); writing always uses the canonical spelling.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            other $(#[$other_meta:meta])* $other:ident;
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
            $(#[$other_meta])*
            $other(String),
        }

        impl $name {
            /// Every known value (everything except the open fallback), in
            /// declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The wire spelling of this value.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )*
                    Self::$other(s) => s,
                }
            }

            /// Reads a wire spelling; never fails, because unknown spellings
            /// are kept in the fallback variant.
            pub fn parse(s: &str) -> Self {
                let trimmed = s.trim();
                $(
                    if trimmed.eq_ignore_ascii_case($wire) {
                        return Self::$variant;
                    }
                )*
                Self::$other(trimmed.to_owned())
            }

            /// Whether this value is outside the known vocabulary.
            pub fn is_other(&self) -> bool {
                matches!(self, Self::$other(_))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::parse(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::parse(&s)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

pub(crate) use open_enum;
