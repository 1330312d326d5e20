{{- define "fpnlink.name" -}}
{{- printf "%s-cloud" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fpnlink.labels" -}}
app.kubernetes.io/name: fpnlink-cloud
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fpnlink.selector" -}}
app.kubernetes.io/name: fpnlink-cloud
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fpnlink.secret" -}}
{{- default (printf "%s-security" (include "fpnlink.name" .)) .Values.security.existingSecret -}}
{{- end -}}

{{- define "fpnlink.httpScheme" -}}
{{- if .Values.security.tls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}
