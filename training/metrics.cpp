#include "training/metrics.h"

#include "engine/json_field.h"

namespace bulwark::training {

nlohmann::ordered_json EpochMetrics::to_json() const {
  nlohmann::ordered_json j;
  j["epoch"] = epoch;
  j["train_loss"] = train_loss;
  j["train_acc"] = train_acc;
  j["val_acc"] = val_acc;
  j["robust_val_acc"] = robust_val_acc;
  j["lr"] = lr;
  j["seconds"] = seconds;
  j["cpu_seconds"] = cpu_seconds;
  j["fwd_passes"] = fwd_passes;
  j["bwd_passes"] = bwd_passes;
  j["images_per_s"] = images_per_s;
  for (const auto& [k, v] : extra) j[k] = v;
  return j;
}

EpochMetrics metrics_from_json(const nlohmann::json& j) {
  EpochMetrics m;
  m.epoch = json_get<int64_t>(j.at("epoch"));
  m.train_loss = j.at("train_loss").get<double>();
  m.train_acc = j.at("train_acc").get<double>();
  m.val_acc = j.at("val_acc").get<double>();
  m.robust_val_acc = j.value("robust_val_acc", -1.0);
  m.lr = j.at("lr").get<double>();
  m.seconds = j.at("seconds").get<double>();
  m.cpu_seconds = j.value("cpu_seconds", 0.0);
  m.fwd_passes = json_get<int64_t>(j.at("fwd_passes"));
  m.bwd_passes = json_get<int64_t>(j.at("bwd_passes"));
  m.images_per_s = j.at("images_per_s").get<double>();
  const nlohmann::json known = m.to_json();
  for (auto& [k, v] : j.items())
    if (!known.contains(k) && v.is_number()) m.extra[k] = v.get<double>();
  return m;
}

}  // namespace bulwark::training
