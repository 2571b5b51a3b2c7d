{{/* Names: a stage's name in Kubernetes (no underscores). */}}
{{- define "enclave.component" -}}
{{- . | replace "_" "-" -}}
{{- end }}

{{- define "enclave.fullname" -}}
{{- printf "%s-%s" .root.Release.Name (include "enclave.component" .component) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "enclave.labels" -}}
app.kubernetes.io/name: enclave
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "enclave.selector" -}}
app.kubernetes.io/name: enclave
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ include "enclave.component" .component }}
{{- end }}

{{- define "enclave.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-enclave" .Release.Name) -}}
{{- end }}

{{/* Every stage that is on: services (enabled unless `enabled: false`) and worker pools. */}}
{{- define "enclave.stages" -}}
{{- $stages := dict -}}
{{- range $name, $spec := .Values.services -}}
{{- if ne (toString $spec.enabled) "false" -}}
{{- $_ := set $stages $name (dict "spec" $spec "command" (list "enclave" "serve" $name) "worker" false) -}}
{{- end -}}
{{- end -}}
{{- range $pool, $spec := .Values.workers -}}
{{- if ne (toString $spec.enabled) "false" -}}
{{- $_ := set $stages (printf "worker-%s" $pool) (dict "spec" $spec "command" (list "enclave" "serve" "worker" "--pool" $pool) "worker" true "pool" $pool) -}}
{{- end -}}
{{- end -}}
{{- toJson $stages -}}
{{- end }}

{{/* Which engines a stage talks to besides NATS (the egress NetworkPolicy). */}}
{{- define "enclave.needs" -}}
{{- $needs := dict "gateway" (list "postgres" "redis") "inference_router" (list "postgres") "memory" (list "postgres" "redis" "qdrant") "audit" (list "postgres") "migrate" (list "postgres") -}}
{{- toJson (get $needs . | default list) -}}
{{- end }}
