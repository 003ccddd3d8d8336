{{/*
The chart name, or nameOverride.
*/}}
{{- define "optionfeed.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or the release name with the chart name appended unless the
release name already contains it. Truncated so that "<fullname>-operator" fits in 63 characters
(label values and most object names are limited to that).
*/}}
{{- define "optionfeed.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's object name: Deployment, ClusterRole and its bindings.
*/}}
{{- define "optionfeed.operator.fullname" -}}
{{- printf "%s-operator" (include "optionfeed.fullname" .) }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "optionfeed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator pod. The name is "<chart>-operator", as the collectors the
operator creates are "optionfeed-collector".
*/}}
{{- define "optionfeed.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optionfeed.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object of the chart.
*/}}
{{- define "optionfeed.labels" -}}
helm.sh/chart: {{ include "optionfeed.chart" . }}
{{ include "optionfeed.operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: {{ include "optionfeed.name" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "optionfeed.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "optionfeed.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when a digest is given, else repository:tag (the tag
defaults to the chart's appVersion).
*/}}
{{- define "optionfeed.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
