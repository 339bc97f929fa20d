//! Where `web_fetch` applies the address policy: a DNS resolver that
//! hands reqwest only checked addresses, a redirect policy that checks
//! every hop, and the reading of a refusal back out of a reqwest error.
//!
//! Checking a URL's host and then letting the HTTP client resolve it again
//! leaves a gap: a name can resolve to a public address for the check and
//! to `127.0.0.1` for the connection (DNS rebinding). So names are
//! resolved once, here, inside the client's own connection path: the
//! addresses that pass [`AllowList::check_resolved`] are the only ones
//! reqwest is given to connect to. URLs that name an address literally
//! never reach a resolver (hyper connects to them directly), so
//! [`check_url`] runs on the request's URL before it is sent and on every
//! redirect hop before it is followed. [`net_policy`](super::net_policy)
//! holds the decision; this module only carries it out.
//!
//! # Invariant
//! Every connection `web_fetch` opens is to an address that passed the
//! policy: a literal checked by [`check_url`] (request and every hop), or
//! an address returned by [`CheckedResolver`]. Nothing else resolves names
//! for the client (no proxy, no DNS overrides).

use std::error::Error;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};

use super::net_policy::{AllowList, HostCheck, Refusal};

/// The most redirects one call follows; the next one fails the call.
pub const MAX_REDIRECTS: usize = 5;

/// Why a URL (the request's or a redirect hop's) is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// The address policy refused the host.
    #[error(transparent)]
    Policy(#[from] Refusal),
    /// The scheme is not http or https (a redirect to `file:`, ...).
    #[error("`{0}:` URLs are not fetched; only http and https are")]
    Scheme(String),
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
}

/// A redirect hop the policy refused: which hop, to where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redirect {hop} to {url}: {reason}")]
pub struct HopRefused {
    /// 1 for the first redirect.
    pub hop: usize,
    /// Where the hop led.
    pub url: Url,
    /// Why it was refused.
    #[source]
    pub reason: UrlRefusal,
}

/// The redirect chain went on past [`MAX_REDIRECTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_REDIRECTS} redirects")]
pub struct TooManyRedirects;

/// Checks a URL about to be requested: its scheme, and its host against
/// the policy. For a name, the addresses are checked later, by the
/// resolver.
///
/// # Errors
/// [`UrlRefusal`] saying why the URL must not be fetched.
pub fn check_url(allow: &AllowList, url: &Url) -> Result<HostCheck, UrlRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme(url.scheme().to_owned()));
    }
    let host = url.host_str().ok_or(UrlRefusal::NoHost)?;
    let port = url.port_or_known_default().ok_or(UrlRefusal::NoHost)?;
    Ok(allow.check_host(host, port)?)
}

/// The allow-list entry that would let `url` through (`host:port`), for
/// hints.
pub fn entry_for(url: &Url) -> Option<String> {
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

/// The redirect policy: at most [`MAX_REDIRECTS`] hops, each checked by
/// [`check_url`] before it is followed. reqwest itself drops
/// `Authorization`, `Cookie`, `Proxy-Authorization` and `WWW-Authenticate`
/// when a hop changes scheme, host or port (its `remove_sensitive_headers`);
/// the tests hold it to that.
pub fn redirect_policy(allow: Arc<AllowList>) -> Policy {
    Policy::custom(move |attempt: Attempt<'_>| {
        // `previous` holds every URL requested so far, the first included.
        let hop = attempt.previous().len();
        if hop > MAX_REDIRECTS {
            return attempt.error(TooManyRedirects);
        }
        match check_url(&allow, attempt.url()) {
            Ok(_) => attempt.follow(),
            Err(reason) => {
                let refused = HopRefused {
                    hop,
                    url: attempt.url().clone(),
                    reason,
                };
                attempt.error(refused)
            }
        }
    })
}

/// A DNS resolver that returns only addresses the policy allows, and
/// fails the name if any of its addresses is refused. Resolution runs on
/// the blocking pool (`getaddrinfo`, so `/etc/hosts` is honoured), bounded
/// by a timeout.
#[derive(Debug)]
pub struct CheckedResolver {
    allow: Arc<AllowList>,
    timeout: Duration,
}

impl CheckedResolver {
    /// A resolver checking against `allow`, giving up after `timeout`.
    pub fn new(allow: Arc<AllowList>, timeout: Duration) -> Self {
        Self { allow, timeout }
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let timeout = self.timeout;
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_checked(&allow, &name, timeout).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves `name` and checks every address it got.
///
/// # Errors
/// A [`Refusal`] (boxed, so it can be found again in reqwest's error
/// chain), a timeout (`io::ErrorKind::TimedOut`, which reqwest reports as
/// a timeout), or the resolver's own error.
pub async fn resolve_checked(
    allow: &AllowList,
    name: &str,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Box<dyn Error + Send + Sync>> {
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "resolving `{name}` took longer than {} ms",
                    timeout.as_millis()
                ),
            )
        })??;
    let addrs: Vec<SocketAddr> = found.collect();
    if addrs.is_empty() {
        return Err(Box::new(io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{name}` resolved to no address"),
        )));
    }
    let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    allow.check_resolved(name, &ips)?;
    Ok(addrs)
}

/// A policy refusal found in an error's chain of causes.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// A redirect hop was refused.
    Hop(&'a HopRefused),
    /// The resolver refused a name's addresses.
    Resolved(&'a Refusal),
    /// The chain ran past [`MAX_REDIRECTS`].
    TooManyRedirects,
}

/// Looks for a refusal of this module in `err` and its causes, by type.
pub fn refusal_in<'a>(err: &'a (dyn Error + 'static)) -> Option<Found<'a>> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(hop) = e.downcast_ref::<HopRefused>() {
            return Some(Found::Hop(hop));
        }
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(Found::Resolved(refusal));
        }
        if e.is::<TooManyRedirects>() {
            return Some(Found::TooManyRedirects);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_a_refused_address_unless_the_name_is_trusted() {
        let deny = AllowList::default();
        let err = resolve_checked(&deny, "localhost", Duration::from_secs(5))
            .await
            .unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().expect("a policy refusal");
        assert_eq!(refusal.range().map(|r| r.name()), Some("loopback"));
        let trust = AllowList::parse(["localhost"]).unwrap();
        let addrs = resolve_checked(&trust, "localhost", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn urls_are_checked_for_scheme_and_host() {
        let deny = AllowList::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            check_url(&deny, &url("https://8.8.8.8/")),
            Ok(HostCheck::Address)
        );
        assert_eq!(
            check_url(&deny, &url("http://example.com/")),
            Ok(HostCheck::Resolve)
        );
        assert!(matches!(
            check_url(&deny, &url("ftp://8.8.8.8/")),
            Err(UrlRefusal::Scheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            check_url(&deny, &url("http://2130706433:8080/")),
            Err(UrlRefusal::Policy(_))
        ));
        // The default port counts as the port.
        let allow = AllowList::parse(["127.0.0.1:80"]).unwrap();
        assert!(check_url(&allow, &url("http://127.0.0.1/")).is_ok());
        assert!(check_url(&allow, &url("https://127.0.0.1/")).is_err());
        assert_eq!(
            entry_for(&url("http://[::1]/x")).as_deref(),
            Some("[::1]:80")
        );
    }

    #[test]
    fn refusals_are_found_by_type_through_the_chain() {
        let hop = HopRefused {
            hop: 2,
            url: Url::parse("http://127.0.0.1:9/").unwrap(),
            reason: UrlRefusal::Scheme("ftp".into()),
        };
        /// An outer error, as reqwest and hyper wrap a cause.
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Box<dyn Error + Send + Sync>);
        let wrapped = Outer(Box::new(Outer(Box::new(hop))));
        assert!(matches!(refusal_in(&wrapped), Some(Found::Hop(h)) if h.hop == 2));
        let resolved = Outer(Box::new(Refusal::Port {
            host: "a".into(),
            port: 1,
            allowed: vec![2],
        }));
        assert!(matches!(refusal_in(&resolved), Some(Found::Resolved(_))));
        assert!(matches!(
            refusal_in(&Outer(Box::new(TooManyRedirects))),
            Some(Found::TooManyRedirects)
        ));
        let plain = io::Error::other("connection refused");
        assert!(refusal_in(&plain).is_none());
    }
}
