# Container image and chart helpers. The image cannot be built without a Docker engine; the chart checks
# run offline (`make chart-test`, also part of ./run test).
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= recsys
CHART := deploy/helm/recsys
RELEASE ?= recsys
NAMESPACE ?= recsys
KIND_CLUSTER ?= recsys

DEBIAN_MIRROR ?= http://deb.debian.org/debian
BASE_IMAGE ?= recsys-base:bookworm

.PHONY: base-image image kind-load minikube-load install-kind install-minikube smoke uninstall chart-test

base-image:  ## a bookworm + python3 base image made without a registry (debootstrap, docker import)
	deploy/base-image.sh $(BASE_IMAGE) $(DEBIAN_MIRROR)

image:  ## build the one recsys image (entrypoint `recsys`); PYTHON_IMAGE=$(BASE_IMAGE) after base-image
	docker build $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	  $(if $(EXTRA_CA_CERTS),--build-arg EXTRA_CA_CERTS="$$(cat $(EXTRA_CA_CERTS))") -t $(IMAGE):$(VERSION) .

kind-load: image  ## put the image into the kind cluster's node
	kind load docker-image $(IMAGE):$(VERSION) --name $(KIND_CLUSTER)

minikube-load: image  ## put the image into minikube's container runtime
	minikube image load $(IMAGE):$(VERSION)

install-kind:  ## helm install with values-kind.yaml (waits for the trainer Job)
	helm upgrade --install $(RELEASE) $(CHART) -n $(NAMESPACE) --create-namespace \
	  -f $(CHART)/values-kind.yaml --set image.repository=$(IMAGE) --set image.tag=$(VERSION) --timeout 20m

install-minikube:  ## helm install with values-minikube.yaml (waits for the trainer Job)
	helm upgrade --install $(RELEASE) $(CHART) -n $(NAMESPACE) --create-namespace \
	  -f $(CHART)/values-minikube.yaml --set image.repository=$(IMAGE) --set image.tag=$(VERSION) --timeout 20m

smoke:  ## wait for the release and send one Recommend through a port-forward
	.venv/bin/recsys k8s smoke --release $(RELEASE) --namespace $(NAMESPACE)

uninstall:
	helm uninstall $(RELEASE) -n $(NAMESPACE)

chart-test:  ## render, lint, schema-validate and policy-check the chart offline
	.venv/bin/pytest tests/helm -q
