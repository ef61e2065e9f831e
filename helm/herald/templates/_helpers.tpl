{{/* Name of the chart, or nameOverride. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>" (or the release name when it holds the chart name). */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one role: edge (also the dev pod) or dispatcher. */}}
{{- define "herald.roleSelector" -}}
{{ include "herald.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herald.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret whose keys become HERALD_* environment variables. */}}
{{- define "herald.secretName" -}}
{{- default (include "herald.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Whether dispatchers run: cluster mode with Kafka brokers. */}}
{{- define "herald.dispatcherEnabled" -}}
{{- if and (eq .Values.mode "cluster") .Values.config.kafka.brokers -}}true{{- end -}}
{{- end -}}

{{- define "herald.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSeconds .Values.drain.shutdownGraceSeconds .Values.drain.extraSeconds -}}
{{- end -}}

{{/*
A TOML value: strings, numbers and booleans as JSON (valid TOML), lists as arrays,
maps as inline tables (keys always quoted, so "group.instance.id" stays one key).
*/}}
{{- define "herald.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "map" $v -}}
{{- $parts := list -}}
{{- range $k := keys $v | sortAlpha -}}
{{- $parts = append $parts (printf "%s = %s" (toJson $k) (include "herald.tomlValue" (index $v $k))) -}}
{{- end -}}
{{- printf "{%s}" (join ", " $parts) -}}
{{- else if kindIs "slice" $v -}}
{{- $parts := list -}}
{{- range $v -}}
{{- $parts = append $parts (include "herald.tomlValue" .) -}}
{{- end -}}
{{- printf "[%s]" (join ", " $parts) -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (floor $v) -}}{{- printf "%d" (int64 $v) -}}{{- else -}}{{- toJson $v -}}{{- end -}}
{{- else -}}
{{- toJson $v -}}
{{- end -}}
{{- end -}}

{{/*
One TOML table: scalar and list keys first, then each map key as a sub-table.
Arguments: name (the table's dotted name) and table (a map).
*/}}
{{- define "herald.tomlTable" -}}
{{- $table := .table -}}
[{{ .name }}]
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if not (kindIs "map" $v) }}
{{ toJson $k }} = {{ include "herald.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if kindIs "map" $v }}

{{ include "herald.tomlTable" (dict "name" (printf "%s.%s" $.name (toJson $k)) "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The whole herald.toml (no apps, no webhooks: those are in the Secret). */}}
{{- define "herald.toml" -}}
{{- $c := .Values.config -}}
# Rendered by the Herald chart from its values (config.*, ports.*, drain.*).
# Apps and webhooks come from the environment (the Secret, via envFrom).
{{ $server := merge (dict "host" "0.0.0.0" "port" .Values.ports.http "metrics_port" .Values.ports.metrics "shutdown_grace" (printf "%ds" (int .Values.drain.shutdownGraceSeconds))) $c.server -}}
{{ include "herald.tomlTable" (dict "name" "server" "table" $server) }}

{{ include "herald.tomlTable" (dict "name" "grpc" "table" (merge (dict "port" .Values.ports.grpc) $c.grpc)) }}
{{- if eq .Values.mode "cluster" }}

{{ include "herald.tomlTable" (dict "name" "redis" "table" $c.redis) }}
{{- if $c.kafka.brokers }}

{{- /* librdkafka properties are strings to Herald, whatever YAML made of them. */}}
{{- $props := dict }}
{{- range $k, $v := $c.kafka.properties }}
{{- $_ := set $props $k (toString $v) }}
{{- end }}
{{ include "herald.tomlTable" (dict "name" "kafka" "table" (merge (dict "properties" $props) (omit $c.kafka "properties"))) }}
{{- end }}
{{- end }}
{{- range $section := list "events" "dispatcher" "connection" "http" "log" }}
{{- with index $c $section }}

{{ include "herald.tomlTable" (dict "name" $section "table" .) }}
{{- end }}
{{- end }}
{{- with .Values.telemetry }}
{{- if .otlpEndpoint }}
{{- $telemetry := dict "otlp_endpoint" .otlpEndpoint "service_name" .serviceName "sample_ratio" .sampleRatio "export_timeout" .exportTimeout "max_queue_size" .maxQueueSize }}
{{- with .resourceAttributes }}
{{- $attributes := dict }}
{{- range $k, $v := . }}
{{- $_ := set $attributes $k (toString $v) }}
{{- end }}
{{- $_ := set $telemetry "resource_attributes" $attributes }}
{{- end }}

{{ include "herald.tomlTable" (dict "name" "telemetry" "table" $telemetry) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes and mounts every Herald container uses. */}}
{{- define "herald.volumes" -}}
- name: config
  configMap:
    name: {{ include "herald.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "herald.volumeMounts" -}}
- name: config
  mountPath: /etc/herald
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "herald.envFrom" -}}
- secretRef:
    name: {{ include "herald.secretName" . }}
{{- end -}}

{{/* Probes on the metrics port: what `herald` serves there. */}}
{{- define "herald.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.drain.preStopSeconds }}
{{- end -}}

{{/* Default topology spread: zones, then nodes, never blocking scheduling. */}}
{{- define "herald.topologySpread" -}}
{{- if .spec -}}
{{ toYaml .spec }}
{{- else -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "herald.roleSelector" . | nindent 6 }}
  {{- if eq .role "edge" }}
  matchLabelKeys:
    - pod-template-hash
  {{- end }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "herald.roleSelector" . | nindent 6 }}
  {{- if eq .role "edge" }}
  matchLabelKeys:
    - pod-template-hash
  {{- end }}
{{- end -}}
{{- end -}}

{{/* Egress of every Herald pod: DNS, Redis and Kafka. */}}
{{- define "herald.egressBackbone" -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# Redis and Kafka (the operator's)
- ports:
    {{- range .backbonePorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end -}}
  {{- with .backboneTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end -}}
{{- end -}}

{{/*
Egress to the OpenTelemetry collector, when telemetry.otlpEndpoint is set: to
networkPolicy.otlpTo on networkPolicy.otlpPorts, or on the endpoint's own port (443 or
80 by its scheme when the URL names none).
*/}}
{{- define "herald.egressOtlp" -}}
{{- $endpoint := .Values.telemetry.otlpEndpoint -}}
{{- if $endpoint -}}
{{- $np := .Values.networkPolicy -}}
{{- $ports := $np.otlpPorts -}}
{{- if not $ports -}}
{{- $url := urlParse $endpoint -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) -}}
{{- if not $port -}}{{- $port = ternary "443" "80" (eq $url.scheme "https") -}}{{- end -}}
{{- $ports = list (atoi $port) -}}
{{- end -}}
# The OpenTelemetry collector (telemetry.otlpEndpoint)
- ports:
    {{- range $ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.otlpTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
