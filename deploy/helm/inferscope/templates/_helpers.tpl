{{/*
Names, labels and shared values of the inferscope chart.
*/}}

{{/* The chart's name (nameOverride wins). */}}
{{- define "inferscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, the prefix of every object's name: the release name alone when it
already contains the chart's name ("inferscope" for `helm install inferscope ...`).
*/}}
{{- define "inferscope.fullname" -}}
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

{{/* "inferscope-0.1.0", for the helm.sh/chart label. */}}
{{- define "inferscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "inferscope.labels" -}}
helm.sh/chart: {{ include "inferscope.chart" . }}
{{ include "inferscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inferscope
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the release's pods (never change them: selectors are immutable). */}}
{{- define "inferscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inferscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* aggregator: name, labels, selector labels. */}}
{{- define "inferscope.aggregator.fullname" -}}
{{- printf "%s-aggregator" (include "inferscope.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inferscope.aggregator.labels" -}}
{{ include "inferscope.labels" . }}
app.kubernetes.io/component: aggregator
{{- end }}

{{- define "inferscope.aggregator.selectorLabels" -}}
{{ include "inferscope.selectorLabels" . }}
app.kubernetes.io/component: aggregator
{{- end }}

{{- define "inferscope.aggregator.serviceAccountName" -}}
{{- if .Values.aggregator.serviceAccount.create }}
{{- default (include "inferscope.aggregator.fullname" .) .Values.aggregator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.aggregator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The headless Service's name (its DNS name resolves to every ready aggregator pod). */}}
{{- define "inferscope.aggregator.headlessName" -}}
{{- printf "%s-headless" (include "inferscope.aggregator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* node-probe: name, labels, selector labels. */}}
{{- define "inferscope.nodeProbe.fullname" -}}
{{- printf "%s-node-probe" (include "inferscope.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inferscope.nodeProbe.labels" -}}
{{ include "inferscope.labels" . }}
app.kubernetes.io/component: node-probe
{{- end }}

{{- define "inferscope.nodeProbe.selectorLabels" -}}
{{ include "inferscope.selectorLabels" . }}
app.kubernetes.io/component: node-probe
{{- end }}

{{- define "inferscope.nodeProbe.serviceAccountName" -}}
{{- if .Values.nodeProbe.serviceAccount.create }}
{{- default (include "inferscope.nodeProbe.fullname" .) .Values.nodeProbe.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.nodeProbe.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the ingest and API tokens. */}}
{{- define "inferscope.authSecretName" -}}
{{- default (printf "%s-auth" (include "inferscope.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The Secret holding ClickHouse's password; empty when there is none. */}}
{{- define "inferscope.clickhouseSecretName" -}}
{{- if .Values.clickhouse.existingSecret }}
{{- .Values.clickhouse.existingSecret }}
{{- else if .Values.clickhouse.password }}
{{- printf "%s-clickhouse" (include "inferscope.fullname" .) }}
{{- end }}
{{- end }}

{{/* An image reference: call with (dict "image" .Values.x.image "root" $). */}}
{{- define "inferscope.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The aggregator URLs node-probe exports to, one per line: nodeProbe.export.endpoints, else this
release's aggregator Service (or its headless Service), https:// when the ingest port has TLS.
*/}}
{{- define "inferscope.exportEndpoints" -}}
{{- if .Values.nodeProbe.export.endpoints }}
{{- range .Values.nodeProbe.export.endpoints }}
{{ . }}
{{- end }}
{{- else }}
{{- $scheme := ternary "https" "http" .Values.aggregator.tls.enabled }}
{{- $service := ternary (include "inferscope.aggregator.headlessName" .) (include "inferscope.aggregator.fullname" .) .Values.nodeProbe.export.headless }}
{{- $port := ternary .Values.aggregator.grpcPort .Values.aggregator.service.grpcPort .Values.nodeProbe.export.headless }}
{{ printf "%s://%s.%s.svc:%v" $scheme $service .Release.Namespace $port }}
{{- end }}
{{- end }}

{{/*
The Secret with the CA node-probe trusts for https:// aggregators: nodeProbe.export.tlsCa's, else
this release's aggregator TLS Secret when it has TLS; empty when there is none.
*/}}
{{- define "inferscope.exportCaSecretName" -}}
{{- if .Values.nodeProbe.export.tlsCa.secretName }}
{{- .Values.nodeProbe.export.tlsCa.secretName }}
{{- else if and .Values.aggregator.enabled .Values.aggregator.tls.enabled }}
{{- .Values.aggregator.tls.secretName }}
{{- end }}
{{- end }}
