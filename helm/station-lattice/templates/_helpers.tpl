{{/* Names: <fullname>-operator, <fullname>-nats. */}}
{{- define "lattice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lattice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lattice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lattice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: station-lattice
{{- end }}

{{/* Selector labels of one component: include "lattice.selectorLabels" (list . "operator") */}}
{{- define "lattice.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "lattice.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "lattice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lattice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "lattice.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lattice.natsService" -}}
{{- printf "%s-nats" (include "lattice.fullname" .) }}
{{- end }}

{{/* How the operator reaches NATS: the Service in its own namespace unless overridden. */}}
{{- define "lattice.operatorNatsUrl" -}}
{{- if .Values.operator.natsUrl }}
{{- .Values.operator.natsUrl }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s:%v" (include "lattice.natsService" .) .Values.nats.port }}
{{- else }}
{{- fail "nats.enabled is false: set operator.natsUrl (and operator.stationNatsUrl) to your NATS" }}
{{- end }}
{{- end }}

{{/* How station pods (in the orgs' namespaces) reach NATS: the Service's namespace-qualified DNS name. */}}
{{- define "lattice.stationNatsUrl" -}}
{{- if .Values.operator.stationNatsUrl }}
{{- .Values.operator.stationNatsUrl }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:%v" (include "lattice.natsService" .) .Release.Namespace .Values.nats.port }}
{{- else }}
{{- include "lattice.operatorNatsUrl" . }}
{{- end }}
{{- end }}

{{/* Names fixed by the operator's JWT mode (operator/station_operator/auth.py). */}}
{{- define "lattice.operatorSecret" -}}lattice-nats-operator{{- end }}
{{- define "lattice.resolverConfigMap" -}}lattice-nats-resolver{{- end }}

{{- define "lattice.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* On how many NATS servers each of the lattice's stores is kept: nats.stateReplicas, else min(replicas, 3). */}}
{{- define "lattice.stateReplicas" -}}
{{- $nats := .Values.nats -}}
{{- if not (kindIs "invalid" $nats.stateReplicas) -}}
{{- if gt (int $nats.stateReplicas) (int $nats.replicas) -}}
{{- fail (printf "nats.stateReplicas (%v) cannot be more than nats.replicas (%v): a store is kept on that many servers" $nats.stateReplicas $nats.replicas) -}}
{{- end -}}
{{- $nats.stateReplicas -}}
{{- else -}}
{{- min (int $nats.replicas) 3 -}}
{{- end -}}
{{- end }}
