{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "potluck.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "potluck.fullname" -}}
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

{{- define "potluck.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "potluck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (gateway, node, redis). Call with (dict "ctx" $ "component" "node"). */}}
{{- define "potluck.selectorLabels" -}}
app.kubernetes.io/name: {{ include "potluck.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "potluck.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Full path of the model file inside every pod. */}}
{{- define "potluck.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.file }}
{{- end }}

{{/* The Orleans Redis clustering connection string: the bundled service or the external one. */}}
{{- define "potluck.redisConnection" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s-redis:%d" (include "potluck.fullname" .) (int .Values.redis.port) }}
{{- else }}
{{- required "redis.external.connectionString is required when redis.enabled=false" .Values.redis.external.connectionString }}
{{- end }}
{{- end }}

{{/* Volumes every Potluck pod has: the model and a writable /tmp (the root filesystem is read-only). */}}
{{- define "potluck.volumes" -}}
- name: tmp
  emptyDir: {}
- name: model
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-model" (include "potluck.fullname" .)) .Values.model.pvc.existingClaim }}
    readOnly: true
{{- else if eq .Values.model.source "hostPath" }}
  hostPath:
    path: {{ .Values.model.hostPath.path }}
    type: {{ .Values.model.hostPath.type }}
{{- else if or (eq .Values.model.source "demo") (eq .Values.model.source "url") }}
  emptyDir:
    sizeLimit: {{ .Values.model.emptyDirSizeLimit }}
{{- else }}
{{- fail (printf "model.source must be demo, url, pvc or hostPath (got %q)" .Values.model.source) }}
{{- end }}
{{- end }}

{{- define "potluck.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}

{{/* Init container that puts the model file in place for source=demo or source=url (nothing otherwise). */}}
{{- define "potluck.modelInitContainers" -}}
{{- if eq .Values.model.source "demo" }}
- name: create-demo-model
  image: {{ include "potluck.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["model", "create-demo", "--output", {{ include "potluck.modelPath" . | quote }}]
  env:
    - name: POTLUCK_HOME
      value: /tmp/potluck
    - name: HOME
      value: /tmp
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: model
      mountPath: {{ .Values.model.mountPath }}
{{- else if eq .Values.model.source "url" }}
- name: download-model
  image: {{ printf "%s:%s" .Values.model.downloadImage.repository .Values.model.downloadImage.tag }}
  imagePullPolicy: {{ .Values.model.downloadImage.pullPolicy }}
  command: ["sh", "-ec"]
  args:
    - |
      # Download to a temporary name and rename, so a half-written file is never taken for the model.
      target={{ include "potluck.modelPath" . | quote }}
      if [ ! -s "$target" ]; then
        wget -q -O "$target.part" "$MODEL_URL"
        if [ -n "$MODEL_SHA256" ]; then echo "$MODEL_SHA256  $target.part" | sha256sum -c -; fi
        mv "$target.part" "$target"
      fi
      ls -l "$target"
  env:
    - name: MODEL_URL
      value: {{ required "model.url is required when model.source=url" .Values.model.url | quote }}
    - name: MODEL_SHA256
      value: {{ .Values.model.sha256 | quote }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: {{ .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* The pool id: the CA's and every member certificate's (potluck://<pool-id>/member/<node-id>). */}}
{{- define "potluck.poolId" -}}
{{- $id := default .Values.clusterId .Values.pool.id }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" $id) }}
{{- fail (printf "pool.id (or clusterId) must be 1 to 63 characters of a-z, A-Z, 0-9, '-', '_' or '.', starting with a letter or digit (got %q)" $id) }}
{{- end }}
{{- $id }}
{{- end }}

{{- define "potluck.caSecretName" -}}
{{- default (printf "%s-pool-ca" (include "potluck.fullname" .)) .Values.pool.ca.existingSecret }}
{{- end }}

{{- define "potluck.joinSecretName" -}}
{{- default (printf "%s-join" (include "potluck.fullname" .)) .Values.pool.join.existingSecret }}
{{- end }}

{{/* The Secret holding the Redis password: the chart's own for the bundled Redis, else redis.auth.existingSecret (may be empty). */}}
{{- define "potluck.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecret }}
{{- else if .Values.redis.enabled }}
{{- printf "%s-redis-auth" (include "potluck.fullname" .) }}
{{- end }}
{{- end }}

{{- define "potluck.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}password{{ end }}
{{- end }}

{{/* Where every Potluck container reads the Redis password (Potluck__Cluster__RedisPasswordFile). */}}
{{- define "potluck.redisPasswordFile" -}}
/etc/potluck/redis/password
{{- end }}

{{/* Environment every member (gateway, node) gets for the Redis password, when there is a secret for it. */}}
{{- define "potluck.redisPasswordEnv" -}}
{{- if include "potluck.redisSecretName" . }}
- name: Potluck__Cluster__RedisPasswordFile
  value: {{ include "potluck.redisPasswordFile" . | quote }}
{{- end }}
{{- end }}

{{- define "potluck.redisPasswordVolume" -}}
{{- with include "potluck.redisSecretName" . }}
- name: redis-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ include "potluck.redisSecretKey" $ }}
        path: password
{{- end }}
{{- end }}

{{- define "potluck.redisPasswordMount" -}}
{{- if include "potluck.redisSecretName" . }}
- name: redis-auth
  mountPath: /etc/potluck/redis
  readOnly: true
{{- end }}
{{- end }}

{{/* Labels that select every pod of this release (the NetworkPolicies' "own pods"). */}}
{{- define "potluck.releasePods" -}}
app.kubernetes.io/name: {{ include "potluck.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
