//! The Events of a reconcile, published after the status that records them, within the bound
//! on the Events of each object.

use crate::domain::plan::{self, ReadyReason};
use crate::shell::api_error::describe;
use crate::shell::context::Context;
use crate::shell::metrics::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::Reporter;
use tracing::{debug, warn};

/// Counts a published or rejected rotation, once: as its Event, after the status that records it.
pub fn count_rotation(metrics: &Metrics, event: &plan::Announcement) {
    match event.reason {
        plan::ROTATED => metrics.rotated("published"),
        r if r == ReadyReason::RotationRejected.as_str() => metrics.rotated("rejected"),
        _ => {}
    }
}

/// Publishes an Event about `regarding` (a cluster-scoped object's go to the namespace
/// `default`, as client-go puts them). One that cannot be published is logged and counted, and
/// does not fail the reconcile: the status already tells the same.
pub async fn publish(ctx: &Context, regarding: &ObjectReference, event: plan::Announcement) {
    let reason = event.reason;
    if !ctx
        .events
        .allow(regarding.uid.as_deref().unwrap_or_default(), reason)
    {
        debug!(
            reason,
            "too many Events of this reason for this object: not published"
        );
        return;
    }
    let body = event_of(regarding, event, &ctx.reporter, jiff::Timestamp::now());
    let namespace = body.metadata.namespace.clone().unwrap_or_default();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(ctx.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &body).await {
        ctx.metrics.failed("publish_event");
        warn!(error = %describe(&error), reason, "could not publish Event");
    }
}

/// The Event kube's `Recorder` would publish, but for its name: the Recorder's is the object's
/// name and a suffix, too long for an object whose name takes the 253 characters a name may.
fn event_of(
    regarding: &ObjectReference,
    event: plan::Announcement,
    reporter: &Reporter,
    at: jiff::Timestamp,
) -> k8s_openapi::api::events::v1::Event {
    let name = crate::domain::render::label_value(regarding.name.as_deref().unwrap_or_default());
    k8s_openapi::api::events::v1::Event {
        action: Some("Reconcile".into()),
        reason: Some(event.reason.into()),
        note: Some(event.note),
        type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
        event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            at,
        )),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}.{:x}", at.as_nanosecond())),
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}
