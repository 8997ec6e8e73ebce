//! The standard proxy environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, lower-case too) for
//! the connection to the API server.
//!
//! Platform calls need nothing here: reqwest reads the same environment for every request. kube
//! does not do what Go clients do: in-cluster it ignores the environment, and from a kubeconfig
//! it compares `NO_PROXY` with the proxy's own address rather than the API server's. So the
//! decision is made again here, for the API server's URL, by hyper-util's matcher (the rules of
//! Go's `httpproxy` package, which reqwest uses too).

use http::Uri;
use hyper_util::client::proxy::matcher::Matcher;

/// The proxy to reach the API server at `cluster_url` through, if any. `configured` is what
/// kube made of the kubeconfig: a `proxy-url` written there wins, anything kube took from the
/// environment is decided again.
pub fn for_api_server(cluster_url: &Uri, configured: Option<Uri>) -> Option<Uri> {
    let from_environment = ["HTTPS_PROXY", "https_proxy"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .filter_map(|value| value.parse::<Uri>().ok())
        .any(|uri| Some(&uri) == configured.as_ref());
    match configured {
        Some(uri) if !from_environment => Some(uri),
        _ => decide(&Matcher::from_env(), cluster_url),
    }
}

fn decide(matcher: &Matcher, cluster_url: &Uri) -> Option<Uri> {
    matcher.intercept(cluster_url).map(|i| i.uri().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(https: &str, no: &str) -> Matcher {
        Matcher::builder().https(https).no(no).build()
    }

    #[test]
    fn the_api_server_goes_through_the_proxy_unless_no_proxy_names_it() {
        let api: Uri = "https://10.0.0.1:443".parse().unwrap();
        let proxy = matcher("http://proxy.corp:3128", "");
        assert_eq!(
            decide(&proxy, &api).map(|u| u.to_string()),
            Some("http://proxy.corp:3128/".into())
        );
        for no in ["10.0.0.1", "10.0.0.0/8", "svc,10.0.0.1"] {
            let bypass = matcher("http://proxy.corp:3128", no);
            assert_eq!(decide(&bypass, &api), None, "NO_PROXY={no}");
        }
    }

    #[test]
    fn no_proxy_is_matched_against_the_api_server_not_the_proxy() {
        let api: Uri = "https://kubernetes.default.svc".parse().unwrap();
        let m = matcher("http://proxy.corp:3128", "proxy.corp");
        assert!(decide(&m, &api).is_some());
        let m = matcher("http://proxy.corp:3128", ".svc");
        assert!(decide(&m, &api).is_none());
    }
}
