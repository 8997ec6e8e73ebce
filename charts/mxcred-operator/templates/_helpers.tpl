{{/* The chart name, or nameOverride. */}}
{{- define "mxcred-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release and chart name, at most 63 characters, no repetition when the release is named after the chart. */}}
{{- define "mxcred-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mxcred-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mxcred-operator.labels" -}}
helm.sh/chart: {{ include "mxcred-operator.chart" . }}
{{ include "mxcred-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "mxcred-operator.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mxcred-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mxcred-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mxcred-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mxcred-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mxcred-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "mxcred-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the operator elects a leader: forced, or more than one replica. */}}
{{- define "mxcred-operator.leaderElect" -}}
{{- if or .Values.leaderElection.force (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{/*
What the operator does in a namespace it serves, and nothing more: the same rules make the
ClusterRole (all namespaces) or the Role of each watched namespace.
Secrets: the operator creates a missing target with a POST and changes it with server-side apply,
which is a patch; it never sends an update (PUT), so `update` is not granted. Events: a recorder is
made per Event, so an Event is only ever created, never patched into a series.
Workloads (rolloutRestart.enabled, without rolloutRestart.namespaces): read one by name, and
server-side apply one annotation of its pod template (a patch); no list, no watch, no create. With
rolloutRestart.namespaces, these rights are in a Role of each of those namespaces only
(restart-rbac.yaml).
*/}}
{{- define "mxcred-operator.rules" -}}
- apiGroups: ["mxcred.io"]
  resources: ["mendixcredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["mxcred.io"]
  resources: ["mendixcredentials/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.rolloutRestart.enabled (not .Values.rolloutRestart.namespaces) }}
{{ include "mxcred-operator.workloadRules" . }}
{{- end }}
{{- if .Values.consumers.enabled }}
{{ include "mxcred-operator.consumerRules" . }}
{{- end }}
{{- end }}

{{/* Finding the consumers of the targets: list and watch the kinds that run pods, read only. */}}
{{- define "mxcred-operator.consumerRules" -}}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["replicasets", "deployments", "statefulsets", "daemonsets"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Restarting workloads: read one by name, and patch it (server-side apply). */}}
{{- define "mxcred-operator.workloadRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}

{{/*
What the operator does beyond namespaces, in cluster mode only (the ClusterRole): serve
ClusterMendixCredentials, and watch namespaces (metadata only) to know which they select.
*/}}
{{- define "mxcred-operator.clusterRules" -}}
- apiGroups: ["mxcred.io"]
  resources: ["clustermendixcredentials"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["mxcred.io"]
  resources: ["clustermendixcredentials/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Where the extra CA bundle is mounted. */}}
{{- define "mxcred-operator.extraCADir" -}}
/etc/mxcred-operator/extra-ca
{{- end }}

{{/* PromQL matchers for this operator's series. */}}
{{- define "mxcred-operator.promSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q,namespace=%q" (include "mxcred-operator.metricsServiceName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* A duration of Prometheus' kind (30s, 15m, 6h, 1d) as a number of seconds. */}}
{{- define "mxcred-operator.seconds" -}}
{{- $d := toString . }}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 }}
{{- $unit := substr (int (sub (len $d) 1)) (len $d) $d }}
{{- if not (hasKey $units $unit) }}
{{- fail (printf "%q is not a duration like 30s, 15m, 6h or 1d" $d) }}
{{- end }}
{{- mul (trimSuffix $unit $d | int) (get $units $unit) }}
{{- end }}

{{/* The image: repository@digest when a digest pins it, else repository:tag. */}}
{{- define "mxcred-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The version label: the tag (the schema keeps it to tag characters), at most 63 of them,
ending in a letter or digit as label values must. A digest never goes into a label. */}}
{{- define "mxcred-operator.version" -}}
{{- .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | trimSuffix "_" | trimSuffix "." }}
{{- end }}
