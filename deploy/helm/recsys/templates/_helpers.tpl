{{/* The four services, in start order (backends first). */}}
{{- define "recsys.componentNames" -}}
features retrieval ranking gateway
{{- end }}

{{/* Fully qualified gRPC service names: what the health service reports and the probes ask for. */}}
{{- define "recsys.grpcServiceName" -}}
{{- $names := dict "gateway" "recsys.v1.Gateway" "features" "recsys.v1.FeatureService" "retrieval" "recsys.v1.RetrievalService" "ranking" "recsys.v1.RankingService" -}}
{{- index $names . -}}
{{- end }}

{{- define "recsys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "recsys.fullname" -}}
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

{{/* Name of a component's objects: dict "root" $ "component" "gateway". */}}
{{- define "recsys.componentFullname" -}}
{{- printf "%s-%s" (include "recsys.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "recsys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component: dict "root" $ "component" "gateway". */}}
{{- define "recsys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of a component's objects: dict "root" $ "component" "gateway". */}}
{{- define "recsys.labels" -}}
helm.sh/chart: {{ include "recsys.chart" .root }}
{{ include "recsys.selectorLabels" . }}
app.kubernetes.io/version: {{ include "recsys.imageTag" .root | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "recsys.name" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "recsys.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The recsys image reference, pinned by tag (never latest) and optionally by digest. */}}
{{- define "recsys.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "recsys.imageTag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "recsys.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "recsys.artifactsClaim" -}}
{{- default (printf "%s-artifacts" (include "recsys.fullname" .)) .Values.artifacts.existingClaim }}
{{- end }}

{{- define "recsys.redisFullname" -}}
{{- include "recsys.componentFullname" (dict "root" . "component" "redis") }}
{{- end }}

{{- define "recsys.redisSecretName" -}}
{{- default (include "recsys.redisFullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "recsys.collectorFullname" -}}
{{- include "recsys.componentFullname" (dict "root" . "component" "otel-collector") }}
{{- end }}

{{/* The OTLP endpoint every service exports to ("" = tracing off). */}}
{{- define "recsys.otlpEndpoint" -}}
{{- if .Values.otelCollector.enabled }}
{{- printf "http://%s.%s.svc.%s:4317" (include "recsys.collectorFullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- .Values.telemetry.otlpEndpoint }}
{{- end }}
{{- end }}

{{/* True when the features service has an online store shared between replicas (Redis). */}}
{{- define "recsys.hasRedis" -}}
{{- if or .Values.redis.enabled .Values.redis.external.url .Values.redis.external.existingSecret }}true{{ end }}
{{- end }}

{{/* A component config value as its RECSYS_* variable's text. Values arrive as float64, and toString
writes a whole 1000000 as "1e+06", which an integer flag rejects: whole numbers are written as integers. */}}
{{- define "recsys.configValue" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end }}

{{/* The gateway's address of a backend: dns:/// + the headless Service, so round_robin sees every pod IP. */}}
{{- define "recsys.backendAddress" -}}
{{- $c := index .root.Values.components .component }}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "recsys.componentFullname" .) .root.Release.Namespace .root.Values.clusterDomain (int $c.port) }}
{{- end }}

{{/* Environment shared by every recsys container (service and trainer): dict "root" $ "component" NAME. */}}
{{- define "recsys.otelEnv" -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "recsys-%s" .component | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ include "recsys.resourceAttributes" . | quote }}
{{- with include "recsys.otlpEndpoint" .root }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_INSECURE
  value: "true"
- name: OTEL_TRACES_EXPORTER
  value: otlp
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
- name: OTEL_METRICS_EXPORTER
  value: {{ include "recsys.metricsExporter" .root | quote }}
{{- end }}

{{/* OTEL_METRICS_EXPORTER: telemetry.metrics.exporter, or otlp when there is somewhere to push to. */}}
{{- define "recsys.metricsExporter" -}}
{{- $m := .Values.telemetry.metrics.exporter }}
{{- if $m }}{{ $m }}{{ else if include "recsys.otlpEndpoint" . }}otlp{{ else }}none{{ end }}
{{- end }}

{{- define "recsys.resourceAttributes" -}}
{{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE)" (printf "service.version=%s" (include "recsys.imageTag" .root)) (printf "service.namespace=%s" .root.Release.Name) }}
{{- range $k, $v := .root.Values.telemetry.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
{{- join "," $attrs }}
{{- end }}

{{- define "recsys.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "recsys.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/* A NetworkPolicy peer: the pods of one component of this release: dict "root" $ "component" NAME. */}}
{{- define "recsys.peer" -}}
- podSelector:
    matchLabels:
      {{- include "recsys.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* Egress every release pod needs: DNS and the OTLP endpoint. */}}
{{- define "recsys.commonEgress" -}}
# DNS, wherever the cluster runs it.
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- if .Values.otelCollector.enabled }}
- to:
    {{- include "recsys.peer" (dict "root" . "component" "otel-collector") | nindent 4 }}
  ports:
    - {protocol: TCP, port: 4317}
    - {protocol: TCP, port: 4318}
{{- else if .Values.telemetry.otlpEndpoint }}
{{- $hostport := splitList ":" (urlParse .Values.telemetry.otlpEndpoint).host }}
# The external OTLP endpoint.
- ports:
    - {protocol: TCP, port: {{ if gt (len $hostport) 1 }}{{ last $hostport }}{{ else }}4317{{ end }}}
{{- end }}
{{- end }}

{{/* The Secret holding the gateway's keys.yaml (and smoke-key): the user's, or the chart's. */}}
{{- define "recsys.gatewayAuthSecretName" -}}
{{- default (include "recsys.componentFullname" (dict "root" . "component" "gateway-auth")) .Values.components.gateway.auth.existingSecret }}
{{- end }}

{{/* TLS (tls.enabled): where each service pod mounts its certificate, key and CA. */}}
{{- define "recsys.tlsDir" -}}
/etc/recsys/tls
{{- end }}

{{/* The Secret a component's certificate is mounted from (tls.crt, tls.key, ca.crt): dict "root" $ "component" NAME. */}}
{{- define "recsys.tlsSecretName" -}}
{{- default (include "recsys.componentFullname" (dict "root" .root "component" (printf "%s-tls" .component))) .root.Values.tls.existingSecret }}
{{- end }}

{{- define "recsys.tlsCAName" -}}
{{- include "recsys.componentFullname" (dict "root" . "component" "tls-ca") }}
{{- end }}

{{/* The names in a component's certificate, as JSON: its Service's short name, .namespace, .namespace.svc
and the FQDN (the gateway dials the backends by FQDN, the test pod the gateway by its short name), plus
tls.gatewayDnsNames for the gateway: dict "root" $ "component" NAME. */}}
{{- define "recsys.tlsDnsNames" -}}
{{- $service := include "recsys.componentFullname" . }}
{{- $ns := .root.Release.Namespace }}
{{- $names := list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.%s" $service $ns .root.Values.clusterDomain) }}
{{- if eq .component "gateway" }}
{{- $names = concat $names .root.Values.tls.gatewayDnsNames }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* The name a TLS client of the component expects in its certificate (the probes use it too). */}}
{{- define "recsys.tlsServerName" -}}
{{- $service := include "recsys.componentFullname" . }}
{{- if eq .component "gateway" }}
{{- $service }}
{{- else }}
{{- printf "%s.%s.svc.%s" $service .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}
{{- end }}

{{/* The probes of a service container: the kubelet's own gRPC probes, or with TLS (which they cannot
speak) `python -m services.healthcheck` over TLS in the container, presenting the pod's own certificate
(the backends require one): dict "root" $ "component" NAME. */}}
{{- define "recsys.probes" -}}
{{- $c := index .root.Values.components .component }}
{{- $service := include "recsys.grpcServiceName" .component }}
{{- $dir := include "recsys.tlsDir" . }}
{{- $tls := .root.Values.tls.enabled }}
{{- $serverName := include "recsys.tlsServerName" . }}
{{- range $kind, $field := dict "startup" "startupProbe" "readiness" "readinessProbe" "liveness" "livenessProbe" }}
{{ $field }}:
  {{- if $tls }}
  exec:
    command:
      - python
      - -m
      - services.healthcheck
      - --tls-ca
      - {{ $dir }}/ca.crt
      - --tls-client-cert
      - {{ $dir }}/tls.crt
      - --tls-client-key
      - {{ $dir }}/tls.key
      - --tls-server-name
      - {{ $serverName }}
      - {{ printf "127.0.0.1:%d" (int $c.port) | quote }}
      - {{ $service }}
  {{- else }}
  grpc:
    port: {{ $c.port }}
    service: {{ $service }}
  {{- end }}
  {{- toYaml (index $c.probes $kind) | nindent 2 }}
{{- end }}
{{- end }}

{{/* RECSYS_REDIS_URL (and the password it is built from) of the chart's Redis or the external one: the
features service's store, and the retraining CronJob's event source. Empty without Redis. */}}
{{- define "recsys.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "recsys.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: RECSYS_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s.%s.svc.%s:6379/%d" (include "recsys.redisFullname" .) .Release.Namespace .Values.clusterDomain (int .Values.redis.database) | quote }}
{{- else if .Values.redis.external.existingSecret }}
- name: RECSYS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else if .Values.redis.external.url }}
- name: RECSYS_REDIS_URL
  value: {{ .Values.redis.external.url | quote }}
{{- end }}
{{- end }}

{{/* The trainer's pod spec, shared by the hook Job and the retraining CronJob: dict "root" $ "args" LIST
"redis" BOOL (RECSYS_REDIS_URL in the environment, for `--events $(RECSYS_REDIS_URL)`). */}}
{{- define "recsys.trainerPodSpec" -}}
{{- $root := .root }}
{{- $t := $root.Values.trainer }}
{{- $ctx := dict "root" $root "component" "trainer" }}
restartPolicy: Never
serviceAccountName: {{ include "recsys.componentFullname" $ctx }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: trainer
    image: {{ include "recsys.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
      {{- range $t.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- include "recsys.otelEnv" $ctx | nindent 6 }}
      {{- if .redis }}
      {{- include "recsys.redisEnv" $root | trim | nindent 6 }}
      {{- end }}
    resources:
      {{- toYaml $t.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "recsys.tmpVolumeMount" $root | nindent 6 }}
      - name: artifacts
        mountPath: {{ $root.Values.artifacts.mountPath }}
volumes:
  {{- include "recsys.tmpVolume" $root | nindent 2 }}
  - name: artifacts
    persistentVolumeClaim:
      claimName: {{ include "recsys.artifactsClaim" $root }}
{{- with $t.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $t.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
