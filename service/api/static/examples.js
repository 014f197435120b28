// Suggestions for a model that ships some (the built-in demo model: GET /info `description` and `examples`): a
// banner saying what the model is, prompts to draw, questions to ask, and an example picture drawn here on a
// canvas (one filled shape, as the demo model knows them) to ask them about.

import { $, el } from "./ui.js";

const COLOURS = { red: "#dc2626", orange: "#f08a1c", yellow: "#f2d51e", green: "#2e9e48", blue: "#2456d6",
                  purple: "#8a3fbf" };
const SHAPES = ["circle", "square", "triangle"];

// One filled shape on white, 160 px, at a random place and size; the canvas says what it drew (data-colour,
// data-shape), so a reader of the page (or a test) can tell whether the answer is right.
export function drawExamplePicture(random = Math.random) {
  const names = Object.keys(COLOURS);
  const colour = names[Math.floor(random() * names.length)];
  const shape = SHAPES[Math.floor(random() * SHAPES.length)];
  const side = 160;
  const canvas = el("canvas", { width: String(side), height: String(side) });
  const g = canvas.getContext("2d");
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, side, side);
  const size = side * (0.35 + 0.25 * random());
  const cx = size / 2 + 6 + random() * (side - size - 12);
  const cy = size / 2 + 6 + random() * (side - size - 12);
  g.fillStyle = COLOURS[colour];
  g.beginPath();
  if (shape === "circle") g.arc(cx, cy, size / 2, 0, 2 * Math.PI);
  else if (shape === "square") g.rect(cx - size / 2, cy - size / 2, size, size);
  else {
    const h = size * Math.sqrt(3) / 2;
    g.moveTo(cx, cy - h / 2);
    g.lineTo(cx + size / 2, cy + h / 2);
    g.lineTo(cx - size / 2, cy + h / 2);
    g.closePath();
  }
  g.fill();
  return { colour, shape, url: canvas.toDataURL("image/png") };
}

function chips(container, label, texts, onPick) {
  container.replaceChildren(el("span", { class: "muted small", text: label }));
  for (const text of texts) {
    const chip = el("button", { type: "button", class: "chip", text });
    chip.addEventListener("click", () => onPick(text));
    container.append(chip);
  }
  container.hidden = false;
}

export function setUpExamples() {
  document.addEventListener("janus:info", ({ detail }) => {
    if (detail.description) {
      $("demo-description").textContent = detail.description;
      $("demo-banner").hidden = false;
    }
    const { prompts = [], questions = [] } = detail.examples || {};
    if (prompts.length) {
      chips($("g-suggestions"), "Try:", prompts, (text) => {
        $("prompt").value = text;
        $("prompt").focus();
      });
    }
    if (questions.length) {
      const box = $("u-suggestions");
      chips(box, "Try:", questions, (text) => {
        $("question").value = text;
        $("question").focus();
      });
      const draw = el("button", { type: "button", class: "chip", id: "example-picture",
                                  text: "Add an example picture" });
      draw.addEventListener("click", () => {
        const picture = drawExamplePicture();
        draw.dataset.colour = picture.colour;
        draw.dataset.shape = picture.shape;
        document.dispatchEvent(new CustomEvent("janus:add-image", {
          detail: { name: `example: ${picture.colour} ${picture.shape}`, url: picture.url } }));
        if (!$("question").value) $("question").value = questions[0];
      });
      box.prepend(draw);
    }
  });
}
