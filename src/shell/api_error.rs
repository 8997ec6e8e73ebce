//! Errors of the API server as the operator repeats them: the HTTP code and reason, never the
//! message (which may quote the object sent or other objects).

use kube::runtime::watcher;

/// A Kubernetes error for a log line: its code and reason only. The API server's messages, and
/// those of admission webhooks and policy engines, may quote the object sent (a target
/// Secret's data) or other objects; none is repeated.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 | 403 => " (check the operator's ServiceAccount and RBAC)",
                409 => " (changed meanwhile; retried)",
                _ => "",
            };
            format!("HTTP {} {}{hint}", status.code, status.reason)
        }
        // A connection that failed (refused, TLS): its causes, which say why and carry no
        // object.
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(e) = cause {
                text.push_str(": ");
                text.push_str(&e.to_string());
                cause = e.source();
            }
            text
        }
        other => other.to_string(),
    }
}

/// A watch error for a log line: the HTTP code and reason only, never the API server's message.
pub fn describe_watch(error: &watcher::Error) -> String {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => describe(e),
        watcher::Error::WatchError(status) => format!("HTTP {} {}", status.code, status.reason),
        watcher::Error::NoResourceVersion => "no resourceVersion in the watch".into(),
    }
}
