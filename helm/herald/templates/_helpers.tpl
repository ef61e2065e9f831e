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
{{- $grpc := merge (dict "port" .Values.ports.grpc) $c.grpc -}}
{{- with include "herald.tlsTable" (dict "root" . "listener" "edge") | fromYaml }}{{ $_ := set $server "tls" . }}{{ end -}}
{{- with include "herald.tlsTable" (dict "root" . "listener" "grpc") | fromYaml }}{{ $_ := set $grpc "tls" . }}{{ end -}}
{{ include "herald.tomlTable" (dict "name" "server" "table" $server) }}

{{ include "herald.tomlTable" (dict "name" "grpc" "table" $grpc) }}
{{- if eq .Values.mode "cluster" }}

{{ include "herald.tomlTable" (dict "name" "redis" "table" $c.redis) }}
{{- if $c.kafka.brokers }}
{{- /* librdkafka properties are strings to Herald, whatever YAML made of them. */}}
{{- $props := dict }}
{{- range $k, $v := $c.kafka.properties }}
{{- $_ := set $props $k (toString $v) }}
{{- end }}
{{- $kafka := merge (dict "properties" $props) (omit $c.kafka "properties" "property_files") }}
{{- with $c.kafka.property_files }}{{ $_ := set $kafka "property_files" . }}{{ end }}

{{ include "herald.tomlTable" (dict "name" "kafka" "table" $kafka) }}
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

{{/*
TLS of one listener (listener: "edge", [server.tls], or "grpc", [grpc.tls]): where its
Secret's files are mounted. The directory of the listener's Secret, and of its client
CA Secret when that is another one.
*/}}
{{- define "herald.tlsDir" -}}
/etc/herald-tls/{{ . }}
{{- end -}}

{{- define "herald.tlsClientCADir" -}}
/etc/herald-tls/{{ . }}-client-ca
{{- end -}}

{{/*
The [server.tls] or [grpc.tls] table of herald.toml, as YAML (nothing when the
listener's TLS is off): file paths in the mounted Secrets, never their contents.
Arguments: root and listener.
*/}}
{{- define "herald.tlsTable" -}}
{{- $t := index .root.Values.tls .listener -}}
{{- if $t.secretName -}}
{{- $dir := include "herald.tlsDir" .listener -}}
cert_file: {{ printf "%s/tls.crt" $dir }}
key_file: {{ printf "%s/tls.key" $dir }}
reload_interval: {{ .root.Values.tls.reloadInterval | quote }}
{{- if $t.clientAuth }}
client_ca_file: {{ printf "%s/ca.crt" (ternary (include "herald.tlsClientCADir" .listener) $dir (not (empty $t.clientCASecretName))) }}
client_auth: {{ $t.clientAuth }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
The appProtocol of a Service port on a listener (edge or grpc): https when Herald serves
TLS there (a mesh or load balancer must pass it through or speak TLS to it, never read
it as cleartext HTTP or gRPC), else the given cleartext protocol.
Arguments: root, listener, plain.
*/}}
{{- define "herald.appProtocol" -}}
{{- ternary "https" .plain (not (empty (index .root.Values.tls .listener).secretName)) -}}
{{- end -}}

{{/* Volumes and mounts of every container running a role (edge, dispatcher, dev): the
config and /tmp. */}}
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

{{/*
The Secrets of the listeners' TLS ([server.tls], [grpc.tls]): volumes and mounts of the
containers that serve the listeners, `herald edge` and `herald dev`, and of no other.
Least privilege: only those commands read the files (herald.toml names them for every
pod, but `herald dispatcher` and `herald smoke` never open them), so the listeners'
private keys stay out of the dispatcher and `helm test` pods.
*/}}
{{- define "herald.listenerTLSVolumes" -}}
{{- range $listener := list "edge" "grpc" }}
{{- $t := index $.Values.tls $listener }}
{{- if $t.secretName }}
{{- $ownCA := and $t.clientAuth (not $t.clientCASecretName) }}
- name: tls-{{ $listener }}
  secret:
    secretName: {{ $t.secretName }}
    # Only the keys Herald reads, readable by the pod's fsGroup (podSecurityContext).
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- if $ownCA }}
      - key: ca.crt
        path: ca.crt
      {{- end }}
{{- if and $t.clientAuth $t.clientCASecretName }}
- name: tls-{{ $listener }}-client-ca
  secret:
    secretName: {{ $t.clientCASecretName }}
    # ca.crt only: a CA's Secret may hold its private key too, which Herald never needs.
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "herald.listenerTLSVolumeMounts" -}}
{{- if or .Values.tls.edge.secretName .Values.tls.grpc.secretName }}
# TLS Secrets as directories, never subPath: the kubelet updates a mounted Secret in
# place (an atomic swap of the directory's files) when cert-manager renews it, which a
# subPath mount never sees; Herald reads the files again every tls.reloadInterval.
{{- end }}
{{- range $listener := list "edge" "grpc" }}
{{- $t := index $.Values.tls $listener }}
{{- if $t.secretName }}
- name: tls-{{ $listener }}
  mountPath: {{ include "herald.tlsDir" $listener }}
  readOnly: true
{{- if and $t.clientAuth $t.clientCASecretName }}
- name: tls-{{ $listener }}-client-ca
  mountPath: {{ include "herald.tlsClientCADir" $listener }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The operator's Secrets of secretFiles: the files the [redis] and [kafka] settings (and
any other *_file of config) name, such as a Redis password, a private CA or Kafka's
sasl.password. Every container that loads herald.toml mounts them, `herald edge`,
`herald dispatcher` and `herald dev`, since Herald reads and checks every file its
configuration names when it starts, whatever the role (a dispatcher also talks to Redis
and Kafka). Not the helm test pod: `herald smoke` loads no herald.toml.
*/}}
{{- define "herald.secretFilesVolumes" -}}
{{- range $i, $f := .Values.secretFiles }}
- name: secret-files-{{ $i }}
  secret:
    secretName: {{ $f.secretName }}
    # Readable by the pod's fsGroup (podSecurityContext), as the TLS Secrets are.
    defaultMode: 0440
    {{- with $f.items }}
    items:
      {{- range . }}
      - key: {{ .key | quote }}
        path: {{ default .key .path | quote }}
      {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "herald.secretFilesVolumeMounts" -}}
{{- if .Values.secretFiles }}
# secretFiles as directories, never subPath: the kubelet swaps a mounted Secret's files
# in place when the Secret changes (a rotated password, a renewed Redis CA), which a
# subPath mount never sees. Herald reads them when it starts: a pod (re)started after a
# rotation reads the new files.
{{- end }}
{{- range $i, $f := .Values.secretFiles }}
- name: secret-files-{{ $i }}
  mountPath: {{ $f.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
What the values must not be that the schema cannot refuse with a message saying why
(JSON Schema errors name only the rule broken): a secret written into the ConfigMap,
a secretFiles mount hiding the chart's own mounts or another one, a file a secretFiles
mount cannot hold. Included by the ConfigMap, which every release renders.
*/}}
{{- define "herald.checkValues" -}}
{{- $c := .Values.config -}}
{{- $redisHow := "put it in a Secret, mount it with secretFiles and name the file in config.redis.password_file (or give HERALD_REDIS__PASSWORD in existingSecret)" -}}
{{- if $c.redis.password -}}
{{- fail (printf "config.redis.password: a password in values is written into the ConfigMap: %s" $redisHow) -}}
{{- end -}}
{{- $urls := list (list "config.redis.url" $c.redis.url) -}}
{{- range $i, $url := $c.redis.shards -}}
{{- $urls = append $urls (list (printf "config.redis.shards[%d]" $i) $url) -}}
{{- end -}}
{{- range $urls -}}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@" (index . 1) -}}
{{- fail (printf "%s: a password in the URL is written into the ConfigMap: leave it out (the user may go in config.redis.username) and %s" (index . 0) $redisHow) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := $c.kafka.properties -}}
{{- $key := lower $k -}}
{{- if or (regexMatch "password|secret|passphrase" $key) (hasSuffix "key.pem" $key) (eq $key "ssl_key") (eq $key "sasl.oauthbearer.config") -}}
{{- if or (hasSuffix "key.pem" $key) (eq $key "ssl_key") -}}
{{- fail (printf "config.kafka.properties.%s: a private key in values is written into the ConfigMap: put it in a Secret, mount it with secretFiles and name the file in config.kafka.properties.ssl.key.location" $k) -}}
{{- end -}}
{{- fail (printf "config.kafka.properties.%s: a secret in values is written into the ConfigMap: put it in a Secret, mount it with secretFiles and name the file in config.kafka.property_files (%q: <mountPath>/<file>)" $k $k) -}}
{{- end -}}
{{- if hasKey ($c.kafka.property_files | default dict) $k -}}
{{- fail (printf "config.kafka.property_files.%s: also set in config.kafka.properties: set it in one place" $k) -}}
{{- end -}}
{{- end -}}
{{- /* The chart's own mounts, which a Secret mounted on, inside or above would hide. */ -}}
{{- $own := dict "/etc/herald" "where the chart mounts herald.toml (its ConfigMap)" "/etc/herald-tls" "where the chart mounts the tls Secrets" "/tmp" "the pods' writable emptyDir" -}}
{{- range $i, $f := .Values.secretFiles -}}
{{- $p := $f.mountPath -}}
{{- range $dir, $what := $own -}}
{{- if or (eq $p $dir) (hasPrefix (printf "%s/" $dir) $p) (hasPrefix (printf "%s/" $p) $dir) -}}
{{- fail (printf "secretFiles[%d].mountPath %s overlaps %s, %s: give each Secret a directory of its own, such as /etc/herald-secrets/<name>" $i $p $dir $what) -}}
{{- end -}}
{{- end -}}
{{- range $j, $g := $.Values.secretFiles -}}
{{- $q := $g.mountPath -}}
{{- if and (lt $j $i) (or (eq $p $q) (hasPrefix (printf "%s/" $q) $p) (hasPrefix (printf "%s/" $p) $q)) -}}
{{- fail (printf "secretFiles[%d].mountPath %s overlaps secretFiles[%d].mountPath %s: give each Secret a directory of its own" $i $p $j $q) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* A file inside a mount that names its items must be one of them. */ -}}
{{- $files := list -}}
{{- range $k := list "password_file" "ca_file" "cert_file" "key_file" -}}
{{- with index $c.redis $k -}}{{ $files = append $files (list (printf "config.redis.%s" $k) .) }}{{- end -}}
{{- end -}}
{{- range $k, $v := $c.kafka.property_files -}}
{{- $files = append $files (list (printf "config.kafka.property_files.%s" $k) $v) -}}
{{- end -}}
{{- range $k, $v := $c.kafka.properties -}}
{{- if and (hasPrefix "ssl." $k) (hasSuffix ".location" $k) -}}
{{- $files = append $files (list (printf "config.kafka.properties.%s" $k) (toString $v)) -}}
{{- end -}}
{{- end -}}
{{- with ($c.dispatcher | default dict).ca_file -}}{{ $files = append $files (list "config.dispatcher.ca_file" .) }}{{- end -}}
{{- range $files -}}
{{- $name := index . 0 -}}
{{- $file := index . 1 -}}
{{- range $i, $f := $.Values.secretFiles -}}
{{- if and $f.items (hasPrefix (printf "%s/" $f.mountPath) $file) -}}
{{- $paths := list -}}
{{- range $f.items -}}{{ $paths = append $paths (default .key .path) }}{{- end -}}
{{- if not (has (trimPrefix (printf "%s/" $f.mountPath) $file) $paths) -}}
{{- fail (printf "%s %s: secretFiles[%d] (Secret %s at %s) holds only %s" $name $file $i $f.secretName $f.mountPath (join ", " $paths)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
What `herald smoke` (the helm test pod) trusts and presents over TLS, from the
smokeTest.tls Secrets: the CA (ca.crt only) and its own client certificate (tls.crt,
tls.key). Never a listener's Secret unless smokeTest.tls names it, and then only those
keys. Directories under /etc/herald-tls, as the listeners' are.
*/}}
{{- define "herald.smokeCADir" -}}/etc/herald-tls/smoke-ca{{- end -}}
{{- define "herald.smokeClientDir" -}}/etc/herald-tls/smoke-client{{- end -}}

{{- define "herald.smokeTLSVolumes" -}}
{{- with .Values.smokeTest.tls }}
{{- if .caSecretName }}
- name: smoke-ca
  secret:
    secretName: {{ .caSecretName }}
    # ca.crt only: naming a CA's own Secret does not bring its private key along.
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if .clientSecretName }}
- name: smoke-client
  secret:
    secretName: {{ .clientSecretName }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "herald.smokeTLSVolumeMounts" -}}
{{- with .Values.smokeTest.tls }}
{{- if .caSecretName }}
- name: smoke-ca
  mountPath: {{ include "herald.smokeCADir" $ }}
  readOnly: true
{{- end }}
{{- if .clientSecretName }}
- name: smoke-client
  mountPath: {{ include "herald.smokeClientDir" $ }}
  readOnly: true
{{- end }}
{{- end }}
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
