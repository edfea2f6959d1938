// cuda_runtime.h of the CPU test build: everything is in cuda_host.h.
#pragma once
#include "../cuda_host.h"
