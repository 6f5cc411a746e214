// One include for all the per-element math shared by the CPU and CUDA kernels.
#pragma once

#include "common.h"
#include "convert.h"
#include "moniqua.h"
#include "packing.h"
#include "philox.h"
#include "qsgd.h"
#include "sign.h"
