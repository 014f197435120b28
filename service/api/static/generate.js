// "Generate images": prompt and options, a progress bar with previews, then the images, each downloadable, with
// the seed.
//
// POST /generate/stream (the request of POST /generate, with `previews`): `progress` events ({steps_done,
// steps_total}), `preview` events (every image as drawn so far, base64), one `decoding` event once every image token
// is drawn, then one `done` event with the images (base64) and the seed used (or one `error` event).

import { call, sseEvents, streamError } from "./api.js";
import { $, clearError, el, isAbort, setBusy, showError, waitingLine } from "./ui.js";

// The request's fields as the form labels them, for the server's messages ("Images must be at most 16").
const LABELS = { prompt: "Prompt", parallel_size: "Images", cfg_weight: "Guidance", seed: "Seed",
                 temperature: "Temperature", format: "Format", previews: "Previews" };

export function setUpGenerate({ onError }) {
  const form = $("generate-form");
  const progress = $("g-progress");
  const status = $("generate-status");
  let running = null;

  document.addEventListener("janus:info", ({ detail }) => {
    $("g-count").max = String(detail.limits.max_parallel_size);
  });

  function requestBody() {
    const body = { prompt: $("prompt").value, format: $("g-format").value };
    const numbers = { parallel_size: "g-count", cfg_weight: "g-guidance", temperature: "g-temperature",
                      seed: "g-seed", previews: "g-previews" };
    // An empty field is left out (the server's default; for the seed: a random one, returned with the images).
    for (const [name, id] of Object.entries(numbers)) {
      const value = $(id).value.trim();
      if (value !== "") body[name] = Number(value);
    }
    return body;
  }

  function showImages(result) {
    const gallery = $("gallery");
    const extension = result.format === "png" ? "png" : "jpg";
    const count = result.images.length;
    gallery.replaceChildren(...result.images.map((image) => {
      const url = `data:${result.media_type};base64,${image.data}`;
      const number = image.index + 1;
      return el("li", {},
        el("figure", {},
          el("img", { src: url, alt: `Generated image ${number} of ${count}`, width: String(result.width),
                      height: String(result.height) }),
          el("figcaption", {},
            el("a", { href: url, download: `janus-${result.seed}-${number}.${extension}`, class: "button secondary",
                      text: `Download ${number}` }))));
    }));
    const line = $("g-seed-line");
    const reuse = el("button", { type: "button", class: "secondary", text: "Use this seed" });
    reuse.addEventListener("click", () => {
      $("g-seed").value = String(result.seed);
      $("g-seed").focus();
    });
    line.replaceChildren(`Seed ${result.seed}: ${count} image${count === 1 ? "" : "s"} of ${result.width}×` +
                         `${result.height} in ${result.timings.total_s.toFixed(1)} s. `, reuse);
    line.hidden = false;
  }

  function showPreview(preview) {
    const count = preview.images.length;
    $("previews").replaceChildren(...preview.images.map((image) => el("li", {},
      el("img", { src: `data:${preview.media_type};base64,${image.data}`,
                  alt: `Preview of image ${image.index + 1} of ${count}` }))));
    $("g-preview-line").textContent = `Drawn so far: step ${preview.steps_done} of ${preview.steps_total}.`;
    $("g-preview").hidden = false;
  }

  function clearPreview() {
    $("g-preview").hidden = true;
    $("previews").replaceChildren();
    $("g-preview-line").textContent = "";
  }

  async function generate() {
    const errorLine = $("generate-error");
    clearError(errorLine);
    progress.value = 0;
    progress.removeAttribute("data-done");
    progress.removeAttribute("data-decoding");
    clearPreview();
    running = new AbortController();
    setBusy($("generate"), $("generate-cancel"), true);
    const stopWaiting = waitingLine(status, running.signal);
    let finished = false;
    try {
      const response = await call("generate/stream", { method: "POST", json: requestBody(), signal: running.signal });
      for await (const { event, data } of sseEvents(response)) {
        stopWaiting();
        if (event === "progress") {
          progress.max = data.steps_total;
          progress.value = data.steps_done;
          status.textContent = `Drawing: step ${data.steps_done} of ${data.steps_total}…`;
        } else if (event === "preview") {
          showPreview(data);
        } else if (event === "decoding") {
          progress.value = progress.max;
          progress.dataset.decoding = "true";
          status.textContent = "Decoding images…";
        } else if (event === "done") {
          progress.value = progress.max;
          progress.removeAttribute("data-decoding");
          progress.dataset.done = "true";
          clearPreview();
          showImages(data);
          status.textContent = "Done.";
          finished = true;
        } else if (event === "error") {
          throw streamError(data);
        }
      }
      if (!finished) throw new Error("The images did not arrive (the connection closed before the end).");
    } catch (error) {
      if (isAbort(error)) {
        status.textContent = "Cancelled.";
      } else {
        status.textContent = "";
        showError(errorLine, error, LABELS);
        onError(error);
      }
    } finally {
      stopWaiting();
      progress.removeAttribute("data-decoding");
      if (!finished) clearPreview();
      running = null;
      setBusy($("generate"), $("generate-cancel"), false);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!running) generate();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  $("generate-cancel").addEventListener("click", () => running?.abort());
}
