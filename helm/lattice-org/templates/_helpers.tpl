{{- define "org.id" -}}
{{- required "org.id is required: --set org.id=<org> (letters, digits, '-' and '_')" .Values.org.id }}
{{- end }}

{{/* The org's namespace: namespace.name, else the org id as a DNS label (create) or the release namespace. */}}
{{- define "org.namespace" -}}
{{- if .Values.namespace.name }}
{{- .Values.namespace.name }}
{{- else if .Values.namespace.create }}
{{- include "org.id" . | lower | replace "_" "-" }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "org.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: station-lattice
lattice.station.dev/org: {{ include "org.id" . }}
{{- end }}

{{/* metadata of a Station or Agent from its values entry: include "org.resourceMeta" (list $ $name $entry) */}}
{{- define "org.resourceMeta" -}}
{{- $root := index . 0 }}{{ $name := index . 1 }}{{ $entry := index . 2 -}}
name: {{ $name }}
namespace: {{ include "org.namespace" $root }}
labels:
  {{- include "org.labels" $root | nindent 2 }}
  {{- with $entry.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $entry.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The set natsLimits (null ones left out) as compact JSON, or "" when none is set. */}}
{{- define "org.natsLimits" -}}
{{- $set := dict -}}
{{- range $key, $value := (.Values.natsLimits | default dict) -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $_ := set $set $key (int64 $value) -}}
{{- end -}}
{{- end -}}
{{- if $set -}}{{ toJson $set }}{{- end -}}
{{- end -}}
