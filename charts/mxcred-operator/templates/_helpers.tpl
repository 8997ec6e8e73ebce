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
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
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
Secrets: the operator writes target Secrets with server-side apply, which is a patch; it never
sends an update (PUT), so `update` is not granted.
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
  verbs: ["create", "patch"]
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
