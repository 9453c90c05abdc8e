import { describe, expect, it } from "vitest";
import { displayNames, staleText } from "./staleness";

describe("staleText", () => {
  it("says nothing while the board is fresh", () => {
    expect(staleText({ stale: false, stale_reason: null, age_ms: 300 })).toBeNull();
    expect(staleText(undefined)).toBeNull();
  });

  it("gives the server's reason and the data's age, as the server sends them", () => {
    // The body the API sends: `stale` is a boolean, the reason is its own field.
    const body = JSON.parse('{"stale": true, "stale_reason": "aggregator not reporting", "age_ms": 42000}');
    expect(staleText(body)).toBe("aggregator not reporting · data 42 s old");
    expect(staleText({ stale: true, stale_reason: "aggregator is 900 events behind", age_ms: 600_000 })).toBe(
      "aggregator is 900 events behind · data 10 min old",
    );
  });

  it("still says stale without a reason or an age", () => {
    expect(staleText({ stale: true, stale_reason: null, age_ms: null })).toBe("stale");
  });
});

describe("displayNames", () => {
  it("qualifies only the names several players share", () => {
    const names = displayNames([
      { player: "us-8dd9b854-bot12", name: "Bot 8" },
      { player: "eu-1a2b3c4d-bot3", name: "Bot 8" },
      { player: "g-50348276", name: "Guest-8276" },
    ]);
    expect(names.get("us-8dd9b854-bot12")).toBe("Bot 8 (us-8dd9)");
    expect(names.get("eu-1a2b3c4d-bot3")).toBe("Bot 8 (eu-1a2b)");
    expect(names.get("g-50348276")).toBe("Guest-8276");
    expect(new Set(names.values()).size).toBe(3);
  });
});
